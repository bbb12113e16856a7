"""What optuna-dashboard cannot know, written into its notes while `hpsearch dashboard` runs.

optuna-dashboard is third-party and reads the storage as plain Optuna: its "Best Trial" card is
the best single trial, one seed of one configuration, which on a seed grid is a lucky draw that
`hpsearch best` may set aside; and a trial whose worker died shows as "Running" until a reaper
fails it. Neither can be changed without forking it. What it does show as written is its notes
(Markdown, kept in the study's system attributes), so hpsearch writes there, through the storage
(never through the web page, which read-only mode keeps read-only), every NOTES_EVERY seconds:

- the study's note: `hpsearch best`'s ranking (mean and interval over seeds, the set-aside ones)
  and where the Best Trial card's trial stands in it; the same ranking as a table on the study's
  top page, next to the card (a Plotly figure, the dashboard's public save_plotly_graph_object);
- a note on the Best Trial card's trial saying the same, and one on each running trial whose
  worker is presumed dead (its heartbeat stopped), until it beats again or is re-queued.

Only hpsearch's part of a note, below its rule, is rewritten: what a user wrote above it stays.
A note is written only when its text changes (every write grows a journal file).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from datetime import UTC, datetime
from typing import Any

import optuna
from optuna.trial import TrialState

from hpsearch import schema
from hpsearch.optuna_private import dashboard_note, dashboard_plot, save_dashboard_note
from hpsearch.storage.optuna_internals import storage_of, study_id, trial_id

log = logging.getLogger("hpsearch.dashboard")
NOTES_EVERY = 30.0  # seconds; HPSEARCH_DASHBOARD_NOTES overrides it, 0 turns the notes off
TOP = 5
MARK = "*Written by hpsearch while `hpsearch dashboard` runs, and rewritten below this line; notes of your own go above it.*"
RULE = "---\n\n" + MARK
_TRIAL_NOTE = re.compile(r"dashboard:(\d+):note_ver")
PLOT_ID = "hpsearch-best"  # the top page's table: one figure per study, rewritten in place


def interval_from_env() -> float:
    """Seconds between refreshes (HPSEARCH_DASHBOARD_NOTES; 0 or 'off': no notes)."""
    raw = os.environ.get("HPSEARCH_DASHBOARD_NOTES", "").strip().lower()
    if not raw:
        return NOTES_EVERY
    if raw in ("off", "no", "none"):
        return 0.0
    from hpsearch.errors import HpsearchError

    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e6:
        raise HpsearchError(f"HPSEARCH_DASHBOARD_NOTES must be seconds >= 0 or 'off', but got {raw!r}")
    return value


# ---------------------------------------------------------------- a note's two parts


def split(body: str) -> tuple[str, str]:
    """(the user's part, hpsearch's part) of a note."""
    at = body.find(RULE)
    if at < 0:
        return body.rstrip(), ""
    return body[:at].rstrip(), body[at + len(RULE):].strip()


def compose(user: str, ours: str) -> str:
    if not ours:
        return user
    # A blank line before the rule: right under a paragraph, '---' would make that paragraph a heading.
    return (f"{user}\n\n" if user else "") + f"{RULE}\n\n{ours}\n"


# ---------------------------------------------------------------- what hpsearch writes


def study_text(data: dict[str, Any], badge: optuna.trial.FrozenTrial | None, where: dict[str, Any] | None) -> str:
    """The study's note: `best`'s top configurations and set-aside ones, and the Best Trial card's place."""
    metric, name = data["metric"], data["study"]
    if not data["configurations"]:
        return f"### Best configurations\n\nNo complete trial yet. `hpsearch best {name}` ranks them once there are."
    lines = [f"### Best configurations, as `hpsearch best {name}` ranks them", "",
             f"Mean {metric} over each configuration's complete seeds [its {data['level']:.0%} t-interval]; clean "
             "configurations (every seed completed) first. The **Best Trial** card shows Optuna's best *single* "
             "trial: one seed, which can be a lucky draw.", "", *_table(data["configurations"], metric, "rank")]
    if data["set_aside"]:
        lines += ["", f"**Set aside**: a seed was pruned or failed, and the surviving seeds alone (the lucky ones) "
                  f"would put each in the top {data['top']}. More seeds settle them: "
                  f"`hpsearch repeat {name} --set-aside --top {data['top']} --seeds S`.", "",
                  *_table(data["set_aside"], metric, "surviving-seed rank")]
    if badge is not None:
        lines += ["", f"**Best Trial (number={badge.number})** on the card: {badge_text(badge, where, data)}"]
    return "\n".join(lines)


def badge_text(badge: optuna.trial.FrozenTrial, where: dict[str, Any] | None, data: dict[str, Any]) -> str:
    """Where the card's single trial stands in `best`'s ranking, in one sentence."""
    metric = data["metric"]
    if where is None:
        return f"{metric} {badge.value:.4g}, a trial `hpsearch best` does not rank (no configuration id)."
    seeds = _seeds(where["seeds"])
    mean = f"mean {metric} {where['value']['mean']:.4f} over {where['value']['n']} complete seed(s)"
    if not where["clean"] and not where["settled_by_repeats"]:
        return (f"one seed ({metric} {badge.value:.4g}) of a configuration that is set aside ({seeds}; "
                f"{mean}, trials {_numbers(where['trials'])}): its surviving seeds are the lucky ones.")
    if where["rank"] == 1:
        return (f"one seed ({metric} {badge.value:.4g}) of the best configuration too: {mean} ({seeds}).")
    first = data["configurations"][0]
    return (f"one seed ({metric} {badge.value:.4g}) of the configuration ranked {where['rank']} of "
            f"{data['n_configurations']} ({mean}); the best configuration is {_params(first['params'])} "
            f"(mean {first['value']['mean']:.4f}).")


def best_figure(data: dict[str, Any], badge: optuna.trial.FrozenTrial | None, where: dict[str, Any] | None) -> Any:
    """The top page's table: `best`'s top configurations, titled with where the card's trial stands."""
    import plotly.graph_objects as go

    records = data["configurations"]
    header = ["rank", f"mean {data['metric']} [{data['level']:.0%} CI]", "seeds", "trials", "parameters"]
    cells = [[str(r["rank"]) for r in records], [_interval(r["value"]) for r in records],
             [_seeds(r["seeds"], r) for r in records], [_numbers(r["trials"]) for r in records],
             [_params(r["params"]).replace("\\|", "|") for r in records]]
    if badge is None:
        card = "no complete trial yet"
    elif where is None or (where["rank"] == 1 and (where["clean"] or where["settled_by_repeats"])):
        card = f"the Best Trial card (trial {badge.number}) is one seed of the first"
    elif not where["clean"] and not where["settled_by_repeats"]:
        card = f"the Best Trial card (trial {badge.number}) is a lucky seed of a set-aside configuration"
    else:
        card = f"the Best Trial card (trial {badge.number}) is one seed of configuration {where['rank']}"
    title = (f"Best configurations over seeds (hpsearch best): {card}.<br>"
             "<sub>Clean configurations (every seed completed) first; the Note page has the details.</sub>")
    figure = go.Figure(go.Table(header={"values": header, "align": "left"},
                                cells={"values": cells, "align": "left"}, columnwidth=[1, 3, 3, 2, 4]))
    figure.update_layout(title={"text": title, "font": {"size": 14}}, template="none",
                         margin={"l": 10, "r": 10, "t": 80, "b": 10}, height=150 + 40 * max(1, len(records)))
    return figure


def _interval(value: dict[str, Any] | None) -> str:
    if value is None:
        return "-"
    if value["low"] is None:
        return f"{value['mean']:.4f} (1 seed)"
    return f"{value['mean']:.4f} [{value['low']:.4f}, {value['high']:.4f}]"


def stale_text(age: float, limit: float, now: float) -> str:
    """A running trial's note while its heartbeat is older than the reaper's grace."""
    # Since when (to the minute), not for how long: the text stays the same between refreshes.
    since = datetime.fromtimestamp(now - age, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"**Stale: its worker is presumed dead.** No heartbeat since {since} (limit {limit:.0f} s). The "
            "dashboard shows it as Running; a running worker's reaper fails it and re-queues it with the same "
            "parameters and seed (resumed from its last checkpoint). With no worker running, it stays so until "
            "one starts.")


def _table(records: list[dict[str, Any]], metric: str, rank_col: str) -> list[str]:
    rows = [f"| {rank_col} | {metric} | seeds | trials | parameters |", "|---:|---|---|---|---|"]
    for r in records:
        rank = str(r["rank"]) if rank_col == "rank" else f"{r['survivor_rank']} (ranked {r['rank']})"
        rows.append(f"| {rank} | {_interval(r['value'])} | {_seeds(r['seeds'], r)} | {_numbers(r['trials'])} | "
                    f"{_params(r['params'])} |")
    return rows


def _seeds(seeds: dict[str, int], record: dict[str, Any] | None = None) -> str:
    """"2 seeds, 1 pruned"; a configuration that broke a constraint says which (it ranks after the feasible)."""
    from hpsearch.report.export import SeedRuns

    text = SeedRuns(seeds["complete"], seeds["pruned"], seeds["failed"], seeds["pending"]).text()
    if record is not None and record.get("violations"):
        text += "; infeasible: " + "; ".join(record["violations"])
    return text


def _numbers(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:8])) + (" …" if len(numbers) > 8 else "")


def _params(params: dict[str, Any]) -> str:
    from hpsearch.report.stats import params_text

    return (params_text(params) or "-").replace("|", "\\|")


# ---------------------------------------------------------------- writing them


def wanted(study: optuna.Study, spec: Any, now: float) -> tuple[dict[int | None, str], Any]:
    """hpsearch's part of every note it keeps on the study (None is the study's, else a trial id),
    and the top page's table."""
    from hpsearch.ops.status import stale_trials
    from hpsearch.report.best import best_data

    data = best_data(study, spec, TOP)
    try:
        badge: optuna.trial.FrozenTrial | None = study.best_trial  # what the dashboard's card shows
    except ValueError:
        badge = None
    where = None
    if badge is not None:
        where = _record_of(badge.number, data)
        if where is None and data["n_configurations"] > TOP:  # ranked lower: every configuration, once
            where = _record_of(badge.number, best_data(study, spec, data["n_configurations"]))
    notes: dict[int | None, str] = {None: study_text(data, badge, where)}
    if badge is not None:
        notes[trial_id(badge)] = f"**This is the dashboard's Best Trial**: {badge_text(badge, where, data)}"
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    by_number = {t.number: t for t in running}
    for number, (age, limit) in stale_trials(study, running).items():
        notes[trial_id(by_number[number])] = stale_text(age, limit, now)
    return notes, best_figure(data, badge, where)


def _record_of(number: int, data: dict[str, Any]) -> dict[str, Any] | None:
    return next((r for r in (*data["configurations"], *data["set_aside"]) if number in r["trials"]), None)


def refresh(study: optuna.Study, spec: Any, now: float | None = None) -> int:
    """Rewrite hpsearch's part of the study's notes and its top-page table where they changed (and
    drop its part from notes it no longer belongs on: a trial no longer stale or no longer the
    card's); how many were written."""
    from optuna_dashboard import save_plotly_graph_object

    storage, sid = storage_of(study), study_id(study)
    notes, figure = wanted(study, spec, time.time() if now is None else now)
    attrs = storage.get_study_system_attrs(sid)
    written = 0
    if dashboard_plot(attrs, PLOT_ID) != figure.to_json():
        save_plotly_graph_object(study, figure, graph_object_id=PLOT_ID)
        written += 1
    for key in attrs:  # trials that carry a part of ours from an earlier refresh
        m = _TRIAL_NOTE.fullmatch(key)
        if m and int(m[1]) not in notes and split(dashboard_note(attrs, int(m[1]))[1])[1]:
            notes[int(m[1])] = ""
    for tid, ours in notes.items():
        version, body = dashboard_note(attrs, tid)
        user, current = split(body)
        if current != ours.strip():
            save_dashboard_note(storage, sid, tid, version + 1, compose(user, ours))
            written += 1
    return written


class NoteKeeper:
    """`hpsearch dashboard`'s thread: every `every` seconds, the notes of every study hpsearch created
    in the storage (plain Optuna studies have no seeds to rank and no heartbeats). A failure (a
    read-only database role, the server away) is one warning per cause; the page is served anyway."""

    def __init__(self, url: str, every: float) -> None:
        self.url, self.every = url, every
        self._stop = threading.Event()
        self._said: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="hpsearch-notes", daemon=True)

    def start(self) -> NoteKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        from hpsearch.storage.backend import open_storage

        storage = None
        while not self._stop.is_set():
            try:
                storage = storage or open_storage(self.url)
                self.run_once(storage)
            except Exception as exc:  # noqa: BLE001 - notes are an extra: never stop the dashboard
                self._warn(None, exc)
            self._stop.wait(self.every)

    def run_once(self, storage: optuna.storages.BaseStorage) -> int:
        """One pass over the storage's hpsearch studies; notes written."""
        from hpsearch.queue import study as study_mod

        written = 0
        for frozen in storage.get_all_studies():
            if schema.SPEC_ATTR not in frozen.user_attrs or len(frozen.directions) != 1:
                continue
            try:
                study = optuna.Study(study_name=frozen.study_name, storage=storage)
                written += refresh(study, study_mod.stored_spec(study))
            except KeyError:
                pass  # deleted since it was listed
            except Exception as exc:  # noqa: BLE001 - one study's trouble does not keep the others' notes
                self._warn(frozen.study_name, exc)
        return written

    def _warn(self, study: str | None, exc: BaseException) -> None:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        if why not in self._said:
            self._said.add(why)
            log.warning("dashboard notes%s not written (%s); the dashboard works without them (said once)",
                        f" of study {study!r}" if study else "", why)
