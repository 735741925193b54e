"""The cron service: `Daily` for the US session that has just closed, at 07:00 Asia/Seoul, Tuesday
to Saturday (the README's crontab line), one run at a time.

07:00 in Seoul is 17:00 or 18:00 of the previous day in New York, so the date run is New York's
date at that moment: Tuesday morning in Seoul runs Monday's session. A US holiday does nothing
(Daily says so). A run still going at the next fire time is not started twice (max_instances=1,
and Luigi's own lock); a fire time missed while the container was down within the grace period
runs once (coalesce).

  python cron.py                 # run the schedule (the compose `cron` service)
  python cron.py --next 5        # print the next fire times and the date each would run

Settings (environment): STOCKPIPE_CRON_DAYS (tue-sat), STOCKPIPE_CRON_TIME (07:00),
STOCKPIPE_CRON_TZ (Asia/Seoul), STOCKPIPE_SESSION_TZ (America/New_York),
STOCKPIPE_CRON_TIMEOUT (seconds a run may take before it is stopped, 10800).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import subprocess
import sys
from zoneinfo import ZoneInfo

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger

log = logging.getLogger("stockpipe.cron")

DAYS = os.environ.get("STOCKPIPE_CRON_DAYS", "tue-sat")
TIME = os.environ.get("STOCKPIPE_CRON_TIME", "07:00")
CRON_TZ = ZoneInfo(os.environ.get("STOCKPIPE_CRON_TZ", "Asia/Seoul"))
SESSION_TZ = ZoneInfo(os.environ.get("STOCKPIPE_SESSION_TZ", "America/New_York"))
TIMEOUT = float(os.environ.get("STOCKPIPE_CRON_TIMEOUT", "10800"))


def trigger() -> CronTrigger:
    hour, minute = (int(part) for part in TIME.split(":"))
    # Day names, not numbers: APScheduler 3 counts weekdays from Monday=0, crontab from Sunday=0.
    return CronTrigger(day_of_week=DAYS, hour=hour, minute=minute, timezone=CRON_TZ)


def session_date(at: dt.datetime) -> dt.date:
    """The US session that has just closed at `at`: New York's calendar date at that moment."""
    return at.astimezone(SESSION_TZ).date()


def command(at: dt.datetime) -> list[str]:
    return ["luigi", "--module", "stockpipe", "Daily", "--date", session_date(at).isoformat()]


def run_daily() -> None:
    argv = command(dt.datetime.now(dt.timezone.utc))
    log.info("running %s", " ".join(argv))
    try:
        code = subprocess.run(argv, timeout=TIMEOUT).returncode
    except subprocess.TimeoutExpired:
        log.error("%s took longer than %.0f s and was stopped", " ".join(argv), TIMEOUT)
        return
    log.log(logging.INFO if code == 0 else logging.ERROR, "%s exited %d", " ".join(argv), code)


def upcoming(count: int, now: dt.datetime) -> list[dt.datetime]:
    times, previous, schedule = [], None, trigger()
    for _ in range(count):
        previous = schedule.get_next_fire_time(previous, now if previous is None else previous + dt.timedelta(seconds=1))
        times.append(previous)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--next", type=int, metavar="N", help="print the next N fire times and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stdout)
    if args.next:
        for at in upcoming(args.next, dt.datetime.now(CRON_TZ)):
            print(f"{at.isoformat()} {' '.join(command(at))}")
        return 0
    scheduler = BlockingScheduler(timezone=CRON_TZ)
    scheduler.add_job(run_daily, trigger(), id="daily", max_instances=1, coalesce=True, misfire_grace_time=3600)
    log.info("Daily at %s %s on %s; next: %s", TIME, CRON_TZ.key, DAYS, upcoming(1, dt.datetime.now(CRON_TZ))[0].isoformat())
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
