"""The shop's phone agent: what it is told (prompts.py) and the tools it may use, each thin:
parse the arguments, call one inventory or desk method, turn the outcome into words from
prompts.py or a ToolError the model can act on. The rules live in the inventory and the desk, not
in the prompt, so a caller talking the model round changes nothing."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import date

from livekit.agents import Agent, RunContext, ToolError, function_tool

import equipment
import prompts
from booking_desk import Booked, BookingDesk, NotBooked, Refused, Saved, SavingSlowly, StillWriting
from call_control import CallControl, CallState
from phone import same_number
from settings import Settings

logger = logging.getLogger("rental-agent")


def ref_key(ref: str) -> str:
    """A booking reference as compared: "r7k 3qx", "R, 7, K, 3, Q, X" and "R7K3QX" are one."""
    return "".join(str(ref).split()).replace(",", "").upper()


def surname_matches(renter_name: str, surname: str) -> bool:
    """Whether `surname` is the surname of the name staff or the agent typed: its last words
    ("Dana van Berg" for "van berg"), or what comes before a comma ("Smith, Dana")."""
    said = re.findall(r"[^\W_]+", surname.casefold())
    name = renter_name.split(",")[0] if "," in renter_name else renter_name
    words = re.findall(r"[^\W_]+", name.casefold())
    return bool(said) and words[-len(said):] == said


class RentalAgent(Agent):
    """The shop's phone agent. Tool docstrings are the model's contract; the rules live in the
    tools and the inventory, so a caller talking the model round changes nothing."""

    def __init__(self, *, settings: Settings, inventory: equipment.Inventory, call: CallState, desk: BookingDesk,
                 control: CallControl, first_snapshot: asyncio.Task[equipment.Snapshot] | None = None) -> None:
        self.settings = settings
        self.inventory = inventory
        self.call = call
        self.desk = desk
        self.control = control
        self._first_snapshot = first_snapshot
        super().__init__(instructions=self.build_instructions())

    def build_instructions(self) -> str:
        hint = self.call.caller_number[-4:] if len(self.call.caller_number) >= 4 else None
        return prompts.system_prompt(self.settings.business_name, self.settings.today(), hint)

    async def snapshot(self) -> equipment.Snapshot:
        """The inventory as this call sees it: the first use awaits the load started at pickup;
        later ones ask the inventory again (it caches, and sees our own bookings)."""
        first = self._first_snapshot
        try:
            if first is not None and not first.done():
                return await asyncio.shield(first)
            self._first_snapshot = None
            return await self.inventory.snapshot()
        except Exception as e:
            logger.error(f"❌ Inventory snapshot failed: {e!r}"[:300])
            return equipment.Snapshot(units=None, age=None, source="error")

    async def _known_snapshot(self) -> equipment.Snapshot:
        snap = await self.snapshot()
        if not snap.known:
            logger.warning("⚠️ Inventory unknown: told the caller we can't check right now")
            raise ToolError(prompts.INVENTORY_UNKNOWN)
        return snap

    @staticmethod
    def _no_barge_in(context: RunContext) -> None:
        """A write must not be cut short by a barge-in; a turn already interrupted ("no, wait")
        writes nothing."""
        try:
            context.disallow_interruptions()
        except RuntimeError:
            logger.info("🚫 Write not made: the caller interrupted first")
            raise ToolError(prompts.BOOKING_INTERRUPTED) from None

    def _contact(self, contact_number: str | None) -> str:
        number = (contact_number or "").strip() or self.call.caller_number
        if not number:
            raise ToolError(prompts.NEED_CONTACT_NUMBER)
        return number

    def _dates(self, start_date: str | None, end_date: str | None) -> tuple[date, date, bool]:
        """The tool's dates (both or neither given: today then), or a ToolError the model can fix."""
        if not (start_date or "").strip() and not (end_date or "").strip():
            today = self.settings.today()
            return today, today, False
        try:
            start, end = equipment.parse_dates(start_date or "", end_date or start_date or "",
                                               today=self.settings.today())
        except equipment.BookingRefused as refused:
            raise ToolError(prompts.refusal(refused)) from None
        return start, end, True

    async def _unit(self, equipment_id: str) -> tuple[equipment.Snapshot, equipment.Unit]:
        snap = await self._known_snapshot()
        unit = snap.find(equipment_id.strip())
        if unit is None:
            raise ToolError(prompts.unknown_unit(equipment_id))
        return snap, unit

    @function_tool()
    async def look_up_equipment(self, context: RunContext, category: str | None = None, keyword: str | None = None,
                                start_date: str | None = None, end_date: str | None = None) -> str:
        """Find equipment free to rent for the caller's dates, with day and week rates and the
        total for those dates; for what is booked, when it is free again.

        Use this whenever the caller asks what you have, whether something is free, or what it
        costs. Never answer those from memory.

        Args:
            category: A category to filter by, such as "excavator" or "generator". Optional.
            keyword: A word to search names and descriptions for, such as "mini" or "3000 watt". Optional.
            start_date: First rental day, YYYY-MM-DD. Leave both dates empty for "today".
            end_date: Last rental day (return day), YYYY-MM-DD.
        """
        snap = await self._known_snapshot()
        start, end, dated = self._dates(start_date, end_date)
        category, keyword = (category or "").strip() or None, (keyword or "").strip() or None
        if free := snap.free_units(start, end, category, keyword):
            return prompts.free_units(snap, free, start, end, dated)
        if matching := snap.search(category, keyword):
            return prompts.nothing_free(snap, matching, start, end)
        return prompts.no_match(snap.categories())

    @function_tool()
    async def get_equipment_details(self, context: RunContext, equipment_id: str) -> str:
        """Details of one item: name, category, rates, deposit, description, and whether it is
        free today.

        Args:
            equipment_id: The item's id as given by look_up_equipment.
        """
        snap, unit = await self._unit(equipment_id)
        today = self.settings.today()
        return prompts.unit_details(unit, snap.free(unit, today, today))

    @function_tool()
    async def get_quote(self, context: RunContext, equipment_id: str, start_date: str, end_date: str) -> str:
        """What renting one item for the dates costs: the rental, damage waiver and tax, the total
        (to be read in words) and the refundable deposit. Use it before booking, and whenever the
        caller asks for a price: never work out a price yourself.

        Args:
            equipment_id: The item's id as given by look_up_equipment.
            start_date: First rental day, YYYY-MM-DD.
            end_date: Last rental day (return day), YYYY-MM-DD.
        """
        snap, unit = await self._unit(equipment_id)
        start, end, _ = self._dates(start_date, end_date)
        try:
            quote = snap.quote(unit, start, end)
        except equipment.NoPrice:
            raise ToolError(prompts.no_price(unit)) from None
        free = "" if snap.free(unit, start, end) else " " + prompts.refusal_reason(equipment.BookingRefused(
            equipment.RefusalCode.NOT_AVAILABLE, unit=unit, start=start, end=end,
            next_free=snap.next_free(unit, start, end)))
        return prompts.quote_text(unit, quote) + free

    @function_tool()
    async def book_equipment(self, context: RunContext, equipment_id: str, renter_name: str, start_date: str,
                             end_date: str, contact_number: str | None = None) -> str:
        """Book one item for the caller. Call this ONLY after you have read the booking back to
        the caller (item, dates, name, contact number) and they said yes.

        Args:
            equipment_id: The item's id as given by look_up_equipment.
            renter_name: The caller's full name.
            start_date: Pick-up date, YYYY-MM-DD.
            end_date: Return date, YYYY-MM-DD.
            contact_number: Best phone number to reach the caller. Leave empty to use the number they are calling from.
        """
        number = self._contact(contact_number)
        if self.desk.at_cap():  # the tools' rule, not the prompt's
            logger.warning(f"🚫 Booking of unit {equipment_id} refused: MAX_BOOKINGS_PER_CALL reached")
            raise ToolError(prompts.booking_limit(self.settings.max_bookings_per_call))
        self._no_barge_in(context)
        try:
            request = equipment.parse_booking(equipment_id, renter_name, number, start_date, end_date,
                                              self.call.call_id, today=self.settings.today())
        except equipment.BookingRefused as refused:
            raise ToolError(prompts.refusal(refused)) from None
        match await self.desk.book(request):
            case Booked(booking):
                return prompts.booked(booking)
            case Refused(refused):
                raise ToolError(prompts.refusal(refused))
            case StillWriting():
                raise ToolError(prompts.BOOKING_TIMED_OUT)
            case NotBooked(Saved(ref)):
                raise ToolError(prompts.booking_failed_recorded(ref))
            case NotBooked(SavingSlowly()):
                raise ToolError(prompts.BOOKING_FAILED_RECORD_SLOW)
            case _:
                raise ToolError(prompts.booking_failed_not_recorded(bool(self.settings.transfer_to)))

    @function_tool()
    async def find_bookings(self, context: RunContext, reference: str | None = None,
                            surname: str | None = None) -> str:
        """Find the caller's current and upcoming bookings: by the number they are calling from,
        or, when that number is hidden or different, by the booking reference plus the surname
        the booking was made under. Use it before changing or cancelling a booking, and when the
        caller asks when something is due back.

        Args:
            reference: The booking reference the caller gives, if any.
            surname: The surname the booking was made under (needed with a reference).
        """
        snap = await self._known_snapshot()
        today = self.settings.today()
        if (reference or "").strip():
            r = snap.reservation(reference or "")
            if r is None or not r.blocking or r.end < today or not (
                    surname_matches(r.renter_name, surname or "") or same_number(r.renter_phone, self.call.caller_number)):
                logger.info("🔎 Booking look-up by reference: no match")
                return prompts.bookings_found([], {}, today)
            found = [r]
        else:
            found = snap.reservations_of(self.call.caller_number, today) if self.call.caller_number else []
        self.call.verified_refs.update(ref_key(r.ref) for r in found)
        names = {u.id: u.name for u in snap.units or ()}
        return prompts.bookings_found(found, names, today)

    async def _change(self, reference: str, request: equipment.ChangeRequest, cancel: bool) -> str:
        ref = ref_key(reference)
        if ref not in self.call.verified_refs:
            raise ToolError(prompts.NOT_FOUND_THIS_CALL)
        snap = await self._known_snapshot()
        r = snap.reservation(ref)
        match await self.desk.change(request, self.settings.today(), r.renter_name if r else "",
                                     (r.renter_phone if r else "") or self.call.caller_number):
            case Booked(booking):
                return prompts.changed(booking, cancel)
            case Refused(refused):
                raise ToolError(prompts.refusal(refused))
            case StillWriting():
                raise ToolError(prompts.BOOKING_TIMED_OUT)
            case NotBooked(Saved(saved)):
                raise ToolError(prompts.booking_failed_recorded(saved))
            case NotBooked(SavingSlowly()):
                raise ToolError(prompts.BOOKING_FAILED_RECORD_SLOW)
            case _:
                raise ToolError(prompts.booking_failed_not_recorded(bool(self.settings.transfer_to)))

    @function_tool()
    async def change_booking(self, context: RunContext, reference: str, new_start_date: str,
                             new_end_date: str) -> str:
        """Extend a booking, or move it to other dates (before it starts). Only for a booking
        find_bookings found in this call, and ONLY after you read the change back (the new dates
        and the new total from get_quote) and the caller said yes.

        Args:
            reference: The booking's reference.
            new_start_date: The first rental day after the change, YYYY-MM-DD (the same to extend).
            new_end_date: The last rental day after the change, YYYY-MM-DD.
        """
        self._no_barge_in(context)
        try:
            start, end = equipment.parse_dates(new_start_date, new_end_date, today=date.min)
        except equipment.BookingRefused as refused:
            raise ToolError(prompts.refusal(refused)) from None
        ref = reference.strip().upper()
        return await self._change(ref, equipment.ChangeRequest(ref, start, end, False, self.call.call_id), False)

    @function_tool()
    async def cancel_booking(self, context: RunContext, reference: str) -> str:
        """Cancel a booking before it starts. Only for a booking find_bookings found in this call,
        and ONLY after you read back which booking will be cancelled and the caller said yes.

        Args:
            reference: The booking's reference.
        """
        self._no_barge_in(context)
        ref = reference.strip().upper()
        today = self.settings.today()
        return await self._change(ref, equipment.ChangeRequest(ref, today, today, True, self.call.call_id), True)

    @function_tool()
    async def shop_hours(self, context: RunContext) -> str:
        """When the shop is open, and whether it is open now."""
        snap = await self.snapshot()
        return prompts.hours(snap.policy, self.settings.now())

    @function_tool()
    async def take_message(self, context: RunContext, name: str, note: str,
                           contact_number: str | None = None) -> str:
        """Take a message so someone from the shop calls the caller back. Use it when you cannot
        check the inventory, cannot book, or the caller wants a person and no transfer is possible.

        Args:
            name: The caller's name.
            note: What they need, in a sentence (item, dates, question).
            contact_number: Best number to call back. Leave empty to use the number they are calling from.
        """
        try:
            request = equipment.parse_callback(name, self._contact(contact_number), note, self.call.call_id)
            outcome = await self.desk.take_message(request)
        except equipment.BookingRefused as refused:
            logger.info(f"🚫 Call-back request refused ({refused.code})")
            raise ToolError(prompts.refusal(refused)) from None
        match outcome:
            case Saved(ref):
                logger.info(f"📝 Call-back request {ref} recorded")
                return prompts.message_saved(ref)
            case SavingSlowly():
                raise ToolError(prompts.MESSAGE_SLOW)
            case _:
                logger.error(f"❌ Could not record a call-back request: {outcome}"[:300])
                raise ToolError(prompts.message_not_saved(bool(self.settings.transfer_to)))

    @function_tool()
    async def transfer_to_staff(self, context: RunContext) -> str:
        """Transfer the caller to a person at the shop. Use when the caller asks for a person, or
        when you cannot help them."""
        if not self.settings.transfer_to:
            logger.info("↪️ Transfer requested but TRANSFER_PHONE_NUMBER is not set: taking a message")
            return prompts.NO_TRANSFER_LINE
        snap = await self.snapshot()
        now = self.settings.now()
        if not snap.policy.is_open(now):
            logger.info("↪️ Transfer requested outside opening hours: offering to book or take a message")
            return prompts.closed_no_transfer(snap.policy, now)
        # once the agent's short "transferring you" line has played
        context.speech_handle.add_done_callback(
            lambda _: self.control.spawn(self.control.transfer_then_end(), "transfer"))
        return prompts.TRANSFERRING

    @function_tool()
    async def end_call(self, context: RunContext) -> str:
        """End the call. Use only when the caller is done (they said goodbye or have no more
        questions). Say a short goodbye in the same reply."""
        logger.info("👋 Agent is ending the call")
        self.control.hang_up_after(context.speech_handle, "agent ended call")
        return prompts.END_CALL_SAY_GOODBYE
