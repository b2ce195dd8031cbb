"""Renewal and trial reminders: which are due for a context at a moment (pure, no I/O).

A reminder is "subscription S renews (or its trial ends) on date D, and someone wants to hear N days
before". The rules file says which N (``days_before`` of each alert); ``billing.sync.scheduler`` keeps
the moments in Redis and turns the due reminders into transitions. Its identity is
(kind, subscription, date, N): a new period is a new date, so it reminds again.

One reminder per alert per period: the alerts of a kind are told apart by their lead times (two alerts,
7 and 1 days ahead, remind twice). A lead time already reminded of but no longer in the rules is an
alert whose ``days_before`` changed (or that went): it counts for the lead time nearest to it not
reminded of yet (``already_reminded``), so changing 7 to 10 after the 7-day reminder does not remind
again, and a reminder queued under the old lead time is delivered by the alert at the nearest one now
(``stand_in``).

A reminder is due from ``date - N days`` until ``date``: one found late (the scheduler was down, the
customer was first cached 5 days before a renewal with N = 7) is still worth sending; one whose date
has passed is not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, get_args

from billing.domain.models import BillingContext, SubscriptionInfo

ReminderKind = Literal["subscription.renewal_upcoming", "subscription.trial_ending"]
REMINDER_KINDS: Final[tuple[ReminderKind, ...]] = get_args(ReminderKind)
RENEWAL_UPCOMING: Final[ReminderKind] = "subscription.renewal_upcoming"
TRIAL_ENDING: Final[ReminderKind] = "subscription.trial_ending"

LeadTimes = Mapping[ReminderKind, Collection[int]]
"""Per kind, the numbers of days before the date at which to remind (one reminder per number)."""

# Subscriptions that will really renew: a trial "renews" into its first invoice (that is the trial
# reminder), and a canceled, unpaid, paused or incomplete one does not renew at all.
_RENEWING: Final = frozenset({"active", "past_due"})


@dataclass(frozen=True, order=True)
class Reminder:
    due_at: datetime
    kind: ReminderKind
    subscription_id: str
    date: datetime  # the renewal (end of the current period) or the end of the trial
    days_before: int

    @property
    def period(self) -> str:
        """The date as whole UTC seconds: names the period (a renewal moves it, a repeat does not)."""
        return str(int(self.date.timestamp()))

    @property
    def cause(self) -> str:
        """The ``Transition.event_id`` of this reminder: the same for every scheduler that finds it."""
        return f"{self.period}-{self.days_before}d"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _dates(sub: SubscriptionInfo) -> Iterable[tuple[ReminderKind, datetime]]:
    if sub.paused:
        return
    if sub.status == "trialing" and sub.trial_end is not None:
        yield TRIAL_ENDING, _aware(sub.trial_end)
    if sub.status in _RENEWING and sub.current_period_end is not None and not sub.cancel_at_period_end:
        end = _aware(sub.current_period_end)
        if sub.cancel_at is not None and _aware(sub.cancel_at) <= end:
            return  # it ends at (or before) the date instead of renewing
        yield RENEWAL_UPCOMING, end


def reminders(context: BillingContext, leads: LeadTimes) -> list[Reminder]:
    """Every reminder the context's subscriptions give under ``leads``, soonest due first."""
    if not context.found:
        return []
    out: list[Reminder] = []
    for sub in context.subscriptions:
        for kind, date in _dates(sub):
            for days in sorted(set(leads.get(kind, ()))):
                out.append(Reminder(date - timedelta(days=days), kind, sub.id, date, days))
    return sorted(out)


def due_reminders(context: BillingContext, leads: LeadTimes, now: datetime) -> list[Reminder]:
    """The reminders due at ``now``: past their moment, before their date."""
    moment = _aware(now)
    return [r for r in reminders(context, leads) if r.due_at <= moment < r.date]


def next_due(context: BillingContext, leads: LeadTimes, now: datetime) -> datetime | None:
    """When the next reminder after ``now`` becomes due (None: none will, until the context changes)."""
    moment = _aware(now)
    return min((r.due_at for r in reminders(context, leads) if r.due_at > moment), default=None)


def wake_at(context: BillingContext, leads: LeadTimes, now: datetime) -> datetime | None:
    """When a scheduler should look at the context: ``now`` if a reminder is due (it may not have been
    sent: the context is new to the schedule), else the next one's moment."""
    if due_reminders(context, leads, now):
        return _aware(now)
    return next_due(context, leads, now)


def stand_in(days: int, leads: Collection[int]) -> int | None:
    """The lead time among ``leads`` nearest to ``days`` (the larger on a tie): the one whose alert a
    reminder of ``days`` stands for once its alert's ``days_before`` changed (None: no lead time)."""
    return min(leads, key=lambda lead: (abs(lead - days), -lead), default=None)


def already_reminded(days: int, sent: Collection[int], leads: Collection[int]) -> bool:
    """Whether the reminder ``days`` ahead of a period is one already sent: ``sent`` are the lead times
    reminded of for that subscription, kind and period, ``leads`` the kind's lead times now.

    Each lead time sent but no longer in ``leads`` (largest first) takes the place of the nearest
    lead time of ``leads`` not sent yet (``stand_in``): that alert has had its reminder."""
    if days in sent:
        return True
    current = set(leads)
    unsent = current - set(sent)
    for gone in sorted(set(sent) - current, reverse=True):
        taken = stand_in(gone, unsent)
        if taken is None:
            break
        if taken == days:
            return True
        unsent.discard(taken)
    return False


def leads_fingerprint(leads: LeadTimes) -> str:
    """A short name of ``leads``: moments computed under one set of lead times are stale under another."""
    text = ";".join(f"{kind}={','.join(str(d) for d in sorted(set(leads.get(kind, ()))))}"
                    for kind in REMINDER_KINDS)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
