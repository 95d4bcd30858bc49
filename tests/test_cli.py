"""`python agent.py ...` as a new user meets it: `--help` lists every command (check included),
help never asks for credentials, and `console --text` works without Deepgram and without PortAudio
(voice mode says what to install)."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes.providers import closed_port_url

ROOT = Path(__file__).resolve().parents[1]


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No credentials at all; the app's variables set empty so a developer's .env cannot fill them."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1",
           "TERM": "xterm", "STATE_DIR": str(tmp_path / "state")}
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "OPENAI_API_KEY", "DEEPGRAM_API_KEY",
                 "GOOGLE_SHEET_ID", "GOOGLE_SERVICE_ACCOUNT_JSON", "GOOGLE_APPLICATION_CREDENTIALS",
                 "LIVEKIT_AGENT_NAME", "NUM_CPUS"):
        env[name] = ""
    env.update(extra)
    return env


def agent(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "agent.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_help_lists_every_command_including_check(tmp_path: Path) -> None:
    out = agent(["--help"], clean_env(tmp_path))
    assert out.returncode == 0, out.stderr
    for command in ("start", "dev", "console", "check"):
        assert f"│ {command} " in out.stdout, out.stdout


@pytest.mark.parametrize("command", ["dev", "start", "console", "check"])
def test_help_of_each_command_needs_no_credentials(command: str, tmp_path: Path) -> None:
    out = agent([command, "--help"], clean_env(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Configuration problem" not in out.stdout + out.stderr
    if command == "check":
        assert "--timeout" in out.stdout  # preflight's own options


def _portaudio_missing() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import sounddevice"], capture_output=True, text=True)
    return "PortAudio" in probe.stderr


def test_console_voice_mode_without_portaudio_says_what_to_install(tmp_path: Path) -> None:
    if not _portaudio_missing():
        pytest.skip("PortAudio is installed on this machine")
    out = agent(["console"], clean_env(tmp_path, OPENAI_API_KEY="sk-test-dummy", DEEPGRAM_API_KEY="dg-test-dummy"))
    assert out.returncode == 2
    assert "apt-get install libportaudio2" in out.stderr and "console --text" in out.stderr
    assert "Traceback" not in out.stderr


def test_console_text_needs_neither_deepgram_nor_portaudio(tmp_path: Path) -> None:
    """The typed console, in a terminal (it needs one), with no Deepgram key: it starts and the
    agent greets; nothing leaves the machine (OpenAI points at a closed port and is not called
    before the first typed line)."""
    env = clean_env(tmp_path, OPENAI_API_KEY="sk-test-dummy", OPENAI_BASE_URL=closed_port_url("/v1"))
    pid, fd = pty.fork()
    if pid == 0:  # the child: the console in a pseudo-terminal
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "agent.py", "console", "--text"], env)
    out = b""
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and b"Thanks for calling" not in out:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            if os.waitpid(pid, os.WNOHANG)[0]:
                pid = 0
                break
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)
            time.sleep(2)
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(fd)
    text = out.decode(errors="replace")
    assert "Thanks for calling" in text, text[-3000:]  # the greeting, as text
    for bad in ("Configuration problem", "PortAudio library not found", "DEEPGRAM_API_KEY", "Traceback"):
        assert bad not in text, (bad, text[-3000:])
