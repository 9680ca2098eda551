"""Run: configure and start a search, and drive it (pause, step, resume, stop) while it runs in the background.

The form's widgets are built from the settings' declarations (core/config.py): each one's kind,
label, help, choices and range come from there, so a new setting appears here by itself.
"""
from __future__ import annotations

from dataclasses import replace

import streamlit as st

from icm_engine.backends.server_protocol import make_server_spec
from icm_engine.core.config import DEFAULT_MODEL, PRESETS, LearnerConfig, ModelConfig, RunConfig, SearchConfig, preset
from icm_engine.core.settings import Setting, settings
from icm_engine.runs.manager import RunManager
from icm_engine.runs.models import list_bundled_models

from .. import readers, services
from ..services import run_view
from ..widgets import CURRENT_RUN, is_live, run_picker, show_status

LOCAL_PATH = "a local path…"
SERVER = "an inference server…"
SERVER_ENGINES = {"openai": "ask the server", "vllm": "vLLM", "sglang": "SGLang", "llamacpp": "llama.cpp (llama-server)",
                  "llama-cpp-python": "llama-cpp-python"}
SETTLE_S = 0.3  # after Pause or Stop, wait this long for the step in flight so the page shows the outcome

# Where each search setting sits on the form, by row. A setting placed nowhere still gets its
# widget, in the last row of the expander, so adding one to SearchConfig needs no change here.
MAIN_ROWS = (("algorithm", "folds", "batch_size"), ("objective", "calibration", "alpha", "seed"),
             ("stop", "steps", "patience_sweeps", "final_pass"))
MORE_ROWS = (("clock", "t0", "t_min", "beta"), ("k_init", "balanced_init", "group_weight", "max_fix_iters"),
             ("scorer", "use_consistency"))


def _setting(name: str) -> Setting:
    return next(s for s in settings(SearchConfig) if s.name == name)


def widget_key(s: Setting) -> str:
    return f"run.{s.option}"


def _widget(place, s: Setting) -> None:
    """The widget a setting's declaration asks for; its value lives in session state under widget_key."""
    key = widget_key(s)
    if s.kind is bool:
        place.checkbox(s.label, key=key, help=s.help)
    elif s.choices:
        place.selectbox(s.label, s.choices, key=key, help=s.help, format_func=s.describe)
    else:
        bound = lambda value: None if value is None else s.kind(value)  # noqa: E731 (int bounds give int values)
        place.number_input(s.label, bound(s.low), bound(s.high), key=key, help=s.help,
                           **({"format": s.form_format} if s.form_format else {}))


def _model_setting(name: str) -> Setting:
    return next(s for s in settings(ModelConfig) if s.name == name)


def _model_config() -> ModelConfig:
    bundled = list(list_bundled_models())
    options = bundled + [LOCAL_PATH, SERVER]
    choice = st.selectbox(_model_setting("name").label, options,
                          index=options.index(DEFAULT_MODEL) if DEFAULT_MODEL in options else 0,
                          key=widget_key(_model_setting("name")),
                          format_func=lambda m: m if m in (LOCAL_PATH, SERVER) else f"{m} (bundled)")
    # Inside a form widgets do not rerun, so the path box is always shown; it counts with LOCAL_PATH only.
    path = st.text_input("Local model path (a directory or a .gguf file), used with 'a local path…'",
                         key="run.model_path")
    name = path.strip() if choice == LOCAL_PATH else choice
    with st.expander("Inference server (vLLM, SGLang, llama.cpp), used with 'an inference server…'"):
        cols = st.columns([3, 2, 2])
        url = cols[0].text_input("Server URL", key="run.server_url", placeholder="http://gpu-box:8000/v1")
        served = cols[1].text_input("Model name it serves", key="run.server_model",
                                    help="the id the server lists at /v1/models")
        engine = cols[2].selectbox("Engine", tuple(SERVER_ENGINES), key="run.server_engine",
                                   format_func=SERVER_ENGINES.get)
        st.caption("The server computes the scores; device and precision below do not apply. Requests in flight: "
                   "ICM_SERVER_CONCURRENCY (default 16). A llama-cpp-python server does not report its context: "
                   "set Max context to its n_ctx.")
    if choice == SERVER:
        name = make_server_spec(url.strip(), served.strip(), engine) if url.strip() and served.strip() else ""
    with st.expander("Device and precision"):
        cols = st.columns(5)
        chosen = {}
        for col, field in zip(cols, ("device", "dtype", "quantization", "kv_dtype")):
            s = _model_setting(field)
            chosen[field] = col.selectbox(s.label, s.choices, key=widget_key(s), help=s.help, format_func=s.describe)
        s = _model_setting("max_context")  # 0 stands for None: the model's own window
        max_context = cols[4].number_input(s.label, s.low, s.high, 0, key=widget_key(s), help=s.help)
    return ModelConfig(name=name, **chosen, max_context=int(max_context) or None)


def _offered() -> list[Setting]:
    return [s for s in settings(SearchConfig) if s.exempt is None]


def _typed(s: Setting, value):
    # an int setting's number input may hand back a float; bools and names are stored as they are
    return s.kind(value) if s.kind in (int, float) else value


def _fill(values: SearchConfig, only_missing: bool) -> None:
    for s in _offered():
        if not (only_missing and widget_key(s) in st.session_state):
            st.session_state[widget_key(s)] = _typed(s, getattr(values, s.name))


def _apply_preset() -> None:
    """on_change of the preset picker: runs before the rerun, so the form below draws the preset's values."""
    _fill(preset(st.session_state["run.preset"]), only_missing=False)


def _preset_picker() -> None:
    st.selectbox("Preset", tuple(PRESETS), key="run.preset", on_change=_apply_preset,
                 format_func=lambda p: {"default": "defaults (measured best with the bundled model)",
                                        "paper": "the paper's text (sum objective, alpha 50, fixed steps)",
                                        "released_code": "the released research code (mean, accepted clock, alpha 30)"}.get(p, p),
                 help="fills in the settings below; each stays editable")


def _rows(rows, offered: dict[str, Setting]) -> None:
    for row in rows:
        for col, name in zip(st.columns(len(row)), row):
            _widget(col, offered[name])


def _search_config() -> SearchConfig:
    # The widgets take their values from session state only (set here once, or by a preset), so a
    # preset can change them without Streamlit's "default value and Session State" conflict.
    _fill(SearchConfig(), only_missing=True)
    offered = {s.name: s for s in _offered()}
    placed = {name for row in MAIN_ROWS + MORE_ROWS for name in row}
    rest = [name for name in offered if name not in placed]
    _rows(MAIN_ROWS, offered)
    with st.expander("Temperature, initialization and more"):
        _rows(MORE_ROWS + tuple(tuple(rest[k:k + 4]) for k in range(0, len(rest), 4)), offered)
    # an exempt setting (none today) keeps the preset's value
    base = preset(st.session_state.get("run.preset", "default"))
    return replace(base, **{s.name: _typed(s, st.session_state[widget_key(s)]) for s in offered.values()})


def _learner_config() -> LearnerConfig:
    """The learner's widgets, from LearnerConfig's declarations: what scores each fold of a scalable run."""
    declared = settings(LearnerConfig)
    for s in declared:
        st.session_state.setdefault(widget_key(s), s.default)
    with st.expander("Learner (scalable algorithm: what is fit on the other folds to score each fold)"):
        for k in range(0, len(declared), 4):
            for col, s in zip(st.columns(4), declared[k:k + 4]):
                _widget(col, s)
    return LearnerConfig(**{s.name: _typed(s, st.session_state[widget_key(s)]) for s in declared})


def _start_form(manager: RunManager) -> None:
    stored = services.datasets(manager)
    if not len(stored):
        st.info("No data yet: load a sample or a table on the Data page first.")
        return
    ids = [int(d) for d in stored["dataset_id"]][::-1]
    rows = {int(r["dataset_id"]): r for _, r in stored.iterrows()}
    tasks = {d: services.dataset_task(manager, d).name for d in ids}
    _preset_picker()
    newest = int(rows[ids[0]]["n_examples"])
    if newest > readers.LARGE_DATASET:  # the form opens on the newest dataset: start it on the algorithm that fits
        st.session_state.setdefault(widget_key(_setting("algorithm")), "scalable")
    with st.form("run.form"):
        # the task comes with the dataset: it was fixed when the data was loaded
        dataset_id = st.selectbox("Dataset and task", ids, key="run.dataset", format_func=lambda d: (
            f"#{d} {rows[d]['name']} · task {tasks[d]} · {rows[d]['n_examples']} examples"))
        name = st.text_input("Run name (optional)", key="run.name")
        model = _model_config()
        try:
            search = _search_config()
        except ValueError as error:  # settings that do not go together (batches with the scalable algorithm)
            search = error
        learner = _learner_config()
        submitted = st.form_submit_button("Start", type="primary")
    if submitted:
        if not model.name:
            st.error("Enter the model's local path, or the server's URL and the model name it serves.")
            return
        if isinstance(search, ValueError):
            st.error(f"Could not start: {search}")
            return
        try:
            config = RunConfig(task=tasks[dataset_id],
                               dataset=str(rows[dataset_id]["source"] or rows[dataset_id]["name"]),
                               search=search, model=model, learner=learner)
            run_id = manager.start_run(dataset_id, config, name=name)
        except (ValueError, KeyError) as error:
            st.error(f"Could not start: {error}")
            return
        st.session_state[CURRENT_RUN] = run_id
        if (config.search.algorithm == "icl" and not config.search.batch_size
                and int(rows[dataset_id]["n_examples"]) > readers.LARGE_DATASET):
            st.warning(f"Run {run_id} searches {rows[dataset_id]['n_examples']} examples in context: on a CPU with a "
                       "small model that takes hours. The scalable algorithm labels 1,000 sentences in about 6 minutes.")
        # kept in the session: the live status below reruns the page as soon as the run's state moves
        st.session_state["run.started"] = run_id


def _settle(manager: RunManager, run_id: int) -> None:
    """After Pause or Stop, let the step in flight finish so the page shows the outcome, not 'running'."""
    try:
        manager.wait(run_id, timeout=SETTLE_S, until=lambda s: s.state not in ("running", "loading"))
    except TimeoutError:
        pass  # a long model step: the live status shows the pause when it lands


def _continue_controls(manager: RunManager, run_id: int, status: dict) -> None:
    """Finish now (the final pass) and N more steps: a finished run can be continued."""
    live = status.state in ("loading", "running")
    view = run_view(manager, run_id)
    unlabeled = readers.coverage(len(view.examples), view.labels, view.excluded)["unlabeled"]
    left, middle, right = st.columns([2, 1, 2])
    more = middle.number_input("More steps", 1, 1_000_000, 50, key="run.more_steps", label_visibility="collapsed")
    left.button(f"Run {int(more)} more steps", key="run.extend", disabled=live, width="stretch",
                on_click=lambda: manager.extend(run_id, int(st.session_state["run.more_steps"])),
                help="continue this run, a finished one too, for this many iterations")
    right.button("Label the rest now (final pass)", key="run.finalize", disabled=live or not unlabeled, width="stretch",
                 on_click=lambda: manager.finalize(run_id),
                 help="each unlabeled example gets argmax P(label | example, labeled set), then ConsistencyFix; "
                      "recorded as a step with flips of cause final_pass")


def _controls(manager: RunManager, run_id: int, status: dict) -> None:
    live = status.state in ("loading", "running")
    done = status.state == "finished"
    batched = services.is_batched(manager, run_id)  # stepped through its batch runs, not itself
    # Callbacks run before the rerun the click starts, so that one rerun already draws the new state.
    actions = {
        "Pause": (lambda: (manager.pause(run_id), _settle(manager, run_id)), not live),
        "Step 1": (lambda: manager.step(run_id, 1), done or batched),
        "Step 10": (lambda: manager.step(run_id, 10), done or batched),
        "Resume": (lambda: manager.resume(run_id), done or status.state == "running"),
        # Stop ends a run's worker before its end; a finished run has nothing left to stop
        "Stop": (lambda: (manager.stop(run_id), _settle(manager, run_id)), not status.active or done),
    }
    for col, (label, (act, disabled)) in zip(st.columns(len(actions)), actions.items()):
        # run.control.*: run.<name> holds the settings' widgets (run.stop is the stopping rule)
        col.button(label, key=f"run.control.{label.lower().replace(' ', '')}", disabled=disabled, width="stretch",
                   on_click=act)


def render_run(manager: RunManager) -> None:
    st.title("Run")
    with st.expander("Start a new run", expanded=not len(services.runs(manager))):
        _start_form(manager)
    st.subheader("Current run")
    run_id = run_picker(manager, "run", label="Run (any earlier run can be reopened)")
    if run_id is None:
        return
    if st.session_state.get("run.started") == run_id:
        batch_size = services.run_info(manager, run_id)["config"]["search"].get("batch_size")
        st.success(f"Started run #{run_id}; the model loads in the background, then the search runs." + (
            f" It searches its dataset in batches of about {batch_size} examples, one after another; once the model "
            "has loaded, its batch runs are listed under it." if batch_size else ""))
    status = manager.status(run_id)
    _controls(manager, run_id, status)
    if not services.is_batched(manager, run_id):  # a batched run is continued through its batch runs
        _continue_controls(manager, run_id, status)

    @st.fragment(run_every=1.0 if is_live(status) else None)
    def live_status() -> None:
        now = show_status(manager, run_id)
        if now.state != status.state or is_live(now) != is_live(status):
            st.rerun(scope="app")  # update which buttons apply, and start or stop refreshing

    live_status()
    config = services.run_info(manager, run_id)["config"]
    with st.expander("Settings of this run"):
        st.json(config)
