# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The weekly review (the seeds' "Sunday Backup System Review") from the repository itself.

For one cluster, over the last ``weeks`` weeks:

trends      per backup type, the duration and stored size of every complete backup, their
            mean, median, last value and least-squares slope per week, weekly means, and the
            compression ratio;
failures    runs that left an incomplete backup (no manifest, older than the grace period, so
            not a run in progress), damaged manifests and failed verification records, counted
            by type, by check, by weekday and by hour (UTC), with the success rate and the
            longest streak of failed runs;
storage     bytes per repository and per storage class (S3 ListObjectsV2 reports the class of
            every object, so lifecycle transitions are priced right);
cost        an estimate per month from configurable prices in USD per GB-month (GB = 2^30
            bytes, as AWS bills) per storage class, or per repository name;
encryption  the manifests of the window that are not encrypted, and the keys in use;
chart       an SVG line chart of durations and sizes (written by hand: no plotting library on
            database hosts or in the execution environment).

Everything is derived from manifests, verification records and listings: the same
repository state gives the same report, byte for byte (no wall-clock time in it).
"""

from __future__ import annotations

import datetime
import statistics

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError, PgsafeError, RepositoryError

GIB = 1024 ** 3
# USD per GB-month, us-east-1 list prices (2025); override with ``prices``. Filesystem and
# NFS storage costs nothing here unless priced (by class "filesystem" or by repository name).
DEFAULT_PRICES = {
    "STANDARD": 0.023,
    "INTELLIGENT_TIERING": 0.023,
    "STANDARD_IA": 0.0125,
    "ONEZONE_IA": 0.01,
    "GLACIER_IR": 0.004,
    "GLACIER": 0.0036,
    "DEEP_ARCHIVE": 0.00099,
    "REDUCED_REDUNDANCY": 0.024,
    "filesystem": 0.0,
}
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# A change between the first and the last week's mean beyond this is called out.
CHANGE_NOTE_PERCENT = 20.0
CHART_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _parse(text: str | None) -> datetime.datetime | None:
    return mf.parse_time(text) if text else None


def _short(text: str | None) -> str | None:
    return (text[:19] + "Z") if text else None


def _week(moment: datetime.datetime) -> str:
    year, week, _day = moment.isocalendar()
    return "%04d-W%02d" % (year, week)


def check_prices(prices) -> dict:
    merged = dict(DEFAULT_PRICES)
    for name, value in (prices or {}).items():
        try:
            price = float(value)
        except (TypeError, ValueError):
            price = -1.0
        if isinstance(value, bool) or price < 0:
            raise ConfigError("price %r for %s is not a number of USD per GB-month" % (value, name),
                              where="prices.%s" % name, fix="give a number such as 0.023 (0 for free storage)")
        merged[str(name)] = price
    return merged


def slope_per_week(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (POSIX seconds, value) points, in value per week."""
    if len(points) < 2:
        return None
    xs = [x for x, _y in points]
    ys = [y for _x, y in points]
    mean_x = sum(xs) / len(xs)
    mean_y = sum(ys) / len(ys)
    denominator = sum((x - mean_x) ** 2 for x in xs)
    if denominator == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / denominator
    return slope * 7 * 86400


def _describe(values: list[float], times: list[float]) -> dict:
    if not values:
        return {"mean": None, "median": None, "min": None, "max": None, "last": None, "slope_per_week": None}
    slope = slope_per_week(list(zip(times, values)))
    return {"mean": round(statistics.fmean(values), 3), "median": round(statistics.median(values), 3),
            "min": min(values), "max": max(values), "last": values[-1],
            "slope_per_week": None if slope is None else round(slope, 3)}


def type_trends(complete: list[dict]) -> dict:
    """Per backup type: the series and its statistics (entries oldest first)."""
    trends = {}
    for backup_type in sorted({entry["type"] for entry in complete}):
        of_type = [entry for entry in complete if entry["type"] == backup_type]
        series = [{"backup_id": entry["backup_id"], "finished_at": _short(entry["finished_at"]),
                   "duration_seconds": float(entry.get("duration_seconds") or 0.0),
                   "size_stored_bytes": int(entry.get("size_stored_bytes") or 0),
                   "size_raw_bytes": int(entry.get("size_raw_bytes") or 0)} for entry in of_type]
        times = [_parse(entry["finished_at"]).timestamp() for entry in of_type]
        durations = [point["duration_seconds"] for point in series]
        sizes = [float(point["size_stored_bytes"]) for point in series]
        weekly: dict[str, list[dict]] = {}
        for entry, point in zip(of_type, series):
            weekly.setdefault(_week(_parse(entry["finished_at"])), []).append(point)
        raw = sum(point["size_raw_bytes"] for point in series)
        stored = sum(point["size_stored_bytes"] for point in series)
        trends[backup_type] = {
            "backups": len(series),
            "duration_seconds": _describe(durations, times),
            "size_stored_bytes": _describe(sizes, times),
            "compression_ratio": round(raw / stored, 2) if stored and raw else None,
            "weekly": [{"week": week, "backups": len(points),
                        "mean_duration_seconds": round(statistics.fmean(p["duration_seconds"] for p in points), 3),
                        "mean_size_stored_bytes": int(statistics.fmean(p["size_stored_bytes"] for p in points)),
                        "stored_bytes": sum(p["size_stored_bytes"] for p in points)}
                       for week, points in sorted(weekly.items())],
            "series": series,
        }
    return trends


def observations(trends: dict) -> list[str]:
    """Plain sentences a reviewer would otherwise have to work out from the numbers."""
    notes = []
    for backup_type, trend in trends.items():
        weekly = trend["weekly"]
        if len(weekly) >= 2:
            for field, label in (("mean_duration_seconds", "duration"), ("mean_size_stored_bytes", "stored size")):
                first, last = float(weekly[0][field]), float(weekly[-1][field])
                if first > 0:
                    change = 100.0 * (last - first) / first
                    if abs(change) >= CHANGE_NOTE_PERCENT:
                        notes.append("%s backup %s %s %.0f%% from week %s to week %s (%s -> %s)" % (
                            backup_type, label, "grew" if change > 0 else "fell", abs(change), weekly[0]["week"],
                            weekly[-1]["week"], _human(first, field), _human(last, field)))
        series = trend["series"]
        if len(series) >= 3:
            previous = [point["size_stored_bytes"] for point in series[:-1]][-7:]
            mean = statistics.fmean(previous)
            if mean and series[-1]["size_stored_bytes"] < 0.5 * mean:
                notes.append("newest %s backup (%s) is less than half the recent mean size: a database or a table "
                             "may be missing from it" % (backup_type, series[-1]["backup_id"]))
            durations = [point["duration_seconds"] for point in series[:-1]]
            median = statistics.median(durations)
            if median and series[-1]["duration_seconds"] > 1.5 * median:
                notes.append("newest %s backup took %s, more than 1.5x the median %s"
                             % (backup_type, _human(series[-1]["duration_seconds"], "duration"),
                                _human(median, "duration")))
    return notes


def _human(value: float, field: str) -> str:
    if "size" in field or "bytes" in field:
        for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(value) < 1024 or unit == "TiB":
                return ("%d %s" % (value, unit)) if unit == "B" else ("%.1f %s" % (value, unit))
            value /= 1024.0
    if value >= 3600:
        return "%.1f h" % (value / 3600)
    if value >= 60:
        return "%.1f min" % (value / 60)
    return "%.1f s" % value


def failure_patterns(entries: list[dict], window_start: datetime.datetime, now: datetime.datetime,
                     grace_hours: float) -> dict:
    """Failed runs (incomplete, past the grace period), damaged manifests, failed verifications."""
    failed_runs = []
    damaged = []
    verify_failures = []
    attempts: dict[str, list[tuple[str, bool]]] = {}
    for entry in entries:
        started = _parse(entry["started_at"])
        if started is None or started < window_start:
            continue
        if entry["status"] == "incomplete":
            if (now - started).total_seconds() < grace_hours * 3600:
                continue  # may be running right now
            failed_runs.append({"backup_id": entry["backup_id"], "type": entry["type"],
                                "started_at": _short(entry["started_at"]),
                                "weekday": WEEKDAYS[started.weekday()], "hour_utc": started.hour})
            attempts.setdefault(entry["type"], []).append((entry["started_at"], False))
        elif entry["status"] == "damaged":
            damaged.append({"backup_id": entry["backup_id"], "type": entry["type"], "error": entry.get("error")})
        else:
            attempts.setdefault(entry["type"], []).append((entry["started_at"], True))
            record = entry.get("verification") or {}
            if record and not record.get("ok"):
                checks = sorted({item.get("check") or "?" for item in record.get("failures") or []}) or ["?"]
                verify_failures.append({"backup_id": entry["backup_id"], "type": entry["type"],
                                        "at": _short(record.get("at")), "level": record.get("level"),
                                        "checks": checks})
    by_type = {}
    for backup_type, runs in sorted(attempts.items()):
        runs.sort()
        streak = longest = 0
        for _started, succeeded in runs:
            streak = 0 if succeeded else streak + 1
            longest = max(longest, streak)
        succeeded = sum(1 for _started, ok in runs if ok)
        by_type[backup_type] = {"runs": len(runs), "succeeded": succeeded, "failed": len(runs) - succeeded,
                                "success_rate_percent": round(100.0 * succeeded / len(runs), 1),
                                "longest_failure_streak": longest}
    return {
        "failed_runs": failed_runs,
        "damaged": damaged,
        "verification_failures": verify_failures,
        "by_type": by_type,
        "failed_runs_by_weekday": _count(run["weekday"] for run in failed_runs),
        "failed_runs_by_hour_utc": _count("%02d" % run["hour_utc"] for run in failed_runs),
        "verification_failures_by_check": _count(check for item in verify_failures for check in item["checks"]),
        "patterns": _patterns(failed_runs, verify_failures),
    }


def _count(values) -> dict:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))


def _patterns(failed_runs: list[dict], verify_failures: list[dict]) -> list[str]:
    notes = []
    for key, label in (("weekday", "on %s"), ("hour_utc", "in the hour %02d:00 UTC")):
        counts = _count(run[key] for run in failed_runs)
        if len(failed_runs) >= 2:
            top, count = max(counts.items(), key=lambda item: (item[1], str(item[0])))
            if count >= 2 and count * 2 > len(failed_runs):
                notes.append("%d of %d failed runs started %s" % (count, len(failed_runs), label % top))
    checks = _count(check for item in verify_failures for check in item["checks"])
    for check, count in checks.items():
        if count >= 2:
            notes.append("%d verifications failed the %s check" % (count, check))
    return notes


def _s3_usage(repository, cluster: str) -> dict:
    """Bytes per storage class below the cluster's prefix (S3 reports each object's class)."""
    prefix = "%s/%s/" % (repository.prefix, cluster) if repository.prefix else cluster + "/"
    usage: dict[str, int] = {}
    try:
        pages = repository.client.get_paginator("list_objects_v2").paginate(Bucket=repository.bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents") or []:
                storage_class = item.get("StorageClass") or "STANDARD"
                usage[storage_class] = usage.get(storage_class, 0) + int(item.get("Size") or 0)
    except PgsafeError:
        raise
    except Exception as exc:  # pylint: disable=broad-except  # botocore errors and connection failures alike
        code = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", "")) or type(exc).__name__
        raise RepositoryError("cannot list %s to measure storage: %s" % (repository.describe(), code),
                              where="s3://%s/%s" % (repository.bucket, prefix),
                              fix="grant s3:ListBucket on the bucket (with the prefix) to these credentials") from None
    return dict(sorted(usage.items()))


def storage_and_cost(repositories: list, cluster: str, prices: dict) -> tuple[list[dict], dict]:
    rows = []
    for repository in repositories:
        if repository.kind == "s3":
            by_class = _s3_usage(repository, cluster)
        else:
            by_class = {"filesystem": repository.usage_bytes(cluster + "/")}
        capacity = repository.capacity_bytes()
        used = sum(by_class.values())
        classes = []
        for storage_class, size in by_class.items():
            price = prices.get(repository.name, prices.get(storage_class))
            classes.append({"storage_class": storage_class, "bytes": size, "price_per_gb_month": price,
                            "cost_per_month": None if price is None else round(size / GIB * price, 4)})
        priced = [item["cost_per_month"] for item in classes if item["cost_per_month"] is not None]
        rows.append({"repository": repository.name, "location": repository.describe(), "used_bytes": used,
                     "capacity_bytes": capacity,
                     "usage_percent": round(100.0 * used / capacity, 2) if capacity else None,
                     "classes": classes, "cost_per_month": round(sum(priced), 4),
                     "unpriced_classes": [item["storage_class"] for item in classes
                                          if item["cost_per_month"] is None]})
    cost = {"currency": "USD", "unit": "GB-month (GB = 2^30 bytes)",
            "per_month": round(sum(row["cost_per_month"] for row in rows), 4),
            "per_year": round(12 * sum(row["cost_per_month"] for row in rows), 2),
            "prices": dict(sorted(prices.items()))}
    return rows, cost


def encryption_review(complete: list[dict]) -> dict:
    keys = set()
    unencrypted = []
    for entry in complete:
        encryption = (entry.get("manifest") or {}).get("encryption") or {}
        if encryption.get("format") in (None, "none") or not encryption.get("keys"):
            unencrypted.append(entry["backup_id"])
        for key in encryption.get("keys") or []:
            name = key.get("key_id") or "%s/%s" % (key.get("namespace"), key.get("name"))
            keys.add("%s %s" % (key.get("type"), name))
    return {"manifests": len(complete), "unencrypted": unencrypted, "keys_in_use": sorted(keys)}


def collect(context, copies=None, weeks: int = 12, prices=None, failure_grace_hours: float = 24.0,
            chart: bool = True, now=None) -> dict:
    """The weekly review of one cluster. Read-only."""
    if isinstance(weeks, bool) or not isinstance(weeks, int) or weeks < 1:
        raise ConfigError("weeks must be a whole number of 1 or more, not %r" % (weeks,), where="weeks",
                          fix="e.g. weeks: 12 (a quarter)")
    prices = check_prices(prices)
    now = now or mf.utcnow()
    window_start = now - datetime.timedelta(weeks=weeks)
    entries = list_backups(context.repository, context.cluster, with_manifests=True, now=now)
    in_window = [entry for entry in entries if entry["status"] == "complete"
                 and _parse(entry["finished_at"]) >= window_start]
    trends = type_trends(in_window)
    storage, cost = storage_and_cost([context.repository] + list(copies or []), context.cluster, prices)
    newest = max((entry["finished_at"] for entry in in_window), default=None)
    result = {
        "cluster": context.cluster,
        "window": {"weeks": weeks, "from_week": _week(window_start), "to_week": _week(now),
                   "data_through": _short(newest)},
        "trends": trends,
        "observations": observations(trends),
        "failures": failure_patterns(entries, window_start, now, failure_grace_hours),
        "storage": storage,
        "cost": cost,
        "encryption": encryption_review(in_window),
        "ingest_bytes_per_week": _ingest_per_week(in_window, weeks),
    }
    result["chart_svg"] = render_chart(trends, "%s: backups, weeks %s to %s" % (
        context.cluster, result["window"]["from_week"], result["window"]["to_week"])) if chart else None
    return result


def _ingest_per_week(complete: list[dict], weeks: int) -> int:
    return int(sum(int(entry.get("size_stored_bytes") or 0) for entry in complete) / weeks)


# --- the chart -------------------------------------------------------------------------------

def _nice_ceiling(value: float) -> float:
    """1, 2, 2.5 or 5 times a power of ten, at or above value (axis maxima people can read)."""
    if value <= 0:
        return 1.0
    power = 1.0
    while power * 10 <= value:
        power *= 10
    while power > value:
        power /= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def _unit(max_value: float, kind: str) -> tuple[float, str]:
    if kind == "bytes":
        for divisor, name in ((GIB * 1024, "TiB"), (GIB, "GiB"), (1024 ** 2, "MiB"), (1024, "KiB")):
            if max_value >= divisor:
                return float(divisor), name
        return 1.0, "B"
    if max_value >= 2 * 3600:
        return 3600.0, "h"
    if max_value >= 120:
        return 60.0, "min"
    return 1.0, "s"


def _esc(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def render_chart(trends: dict, title: str, width: int = 760, panel_height: int = 170) -> str:
    """Two panels (duration, stored size) sharing the time axis; one line per backup type."""
    left, right, top, gap, bottom = 70, 150, 40, 50, 40
    height = top + 2 * panel_height + gap + bottom
    plot_width = width - left - right
    points = [(_parse(point["finished_at"].replace("Z", ".000000Z")).timestamp(), backup_type, point)
              for backup_type, trend in trends.items() for point in trend["series"]]
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
             'font-family="sans-serif" font-size="11">' % (width, height, width, height),
             '<rect width="100%" height="100%" fill="white"/>',
             '<text x="%d" y="20" font-size="14" font-weight="bold">%s</text>' % (left, _esc(title))]
    if not points:
        parts.append('<text x="%d" y="%d">no complete backup in the window</text>' % (left, top + panel_height))
        parts.append("</svg>")
        return "\n".join(parts) + "\n"
    t_min = min(point[0] for point in points)
    t_max = max(point[0] for point in points)
    span = (t_max - t_min) or 86400.0

    def x_of(moment: float) -> float:
        return left + plot_width * (moment - t_min) / span

    panels = (("duration_seconds", "duration", "duration"), ("size_stored_bytes", "stored size", "bytes"))
    for index, (field, label, kind) in enumerate(panels):
        y0 = top + index * (panel_height + gap)
        peak = max(float(point[2][field]) for point in points)
        divisor, unit = _unit(peak, kind)
        ceiling = _nice_ceiling(peak / divisor) if peak > 0 else 1.0

        def y_of(value: float, y0=y0, ceiling=ceiling, divisor=divisor) -> float:
            return y0 + panel_height - panel_height * (value / divisor) / ceiling

        parts.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>'
                     % (left, y0, plot_width, panel_height))
        for step in range(5):
            value = ceiling * step / 4
            y = y0 + panel_height - panel_height * step / 4
            parts.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/>' % (left, y, left + plot_width, y))
            parts.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (left - 6, y + 4, _fmt(value)))
        parts.append('<text x="14" y="%d" transform="rotate(-90 14 %d)" text-anchor="middle">%s (%s)</text>'
                     % (y0 + panel_height // 2, y0 + panel_height // 2, label, unit))
        for colour_index, backup_type in enumerate(sorted(trends)):
            colour = CHART_COLOURS[colour_index % len(CHART_COLOURS)]
            line = [(x_of(moment), y_of(float(point[field]))) for moment, kind_, point in points
                    if kind_ == backup_type]
            if len(line) > 1:
                parts.append('<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>'
                             % (colour, " ".join("%.1f,%.1f" % xy for xy in line)))
            for x, y in line:
                parts.append('<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"/>' % (x, y, colour))
    # Time axis under the lower panel: the first day of each week in the window, at most 8 labels.
    axis_y = top + 2 * panel_height + gap
    days = sorted({datetime.datetime.fromtimestamp(moment, datetime.timezone.utc).date() for moment, _t, _p in points})
    step = max(1, len(days) // 8)
    for day in days[::step]:
        moment = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc).timestamp()
        x = x_of(max(moment, t_min))
        parts.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (x, axis_y + 16, day.strftime("%m-%d")))
    for colour_index, backup_type in enumerate(sorted(trends)):
        y = top + 10 + 16 * colour_index
        colour = CHART_COLOURS[colour_index % len(CHART_COLOURS)]
        parts.append('<rect x="%d" y="%d" width="12" height="3" fill="%s"/>' % (left + plot_width + 14, y - 4, colour))
        parts.append('<text x="%d" y="%d">%s (%d)</text>'
                     % (left + plot_width + 32, y, _esc(backup_type), trends[backup_type]["backups"]))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _fmt(value: float) -> str:
    return ("%d" % value) if float(value).is_integer() else ("%.2f" % value).rstrip("0").rstrip(".")
