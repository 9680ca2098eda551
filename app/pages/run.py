"""Run: configure and start a search, and drive it (pause, step, resume, stop) while it runs in the background."""
from __future__ import annotations

import streamlit as st

from icm_engine.config import CALIBRATIONS, SCORERS, ModelConfig, RunConfig, SearchConfig
from icm_engine.manager import RunManager
from icm_engine.models import DEFAULT_MODEL, list_bundled_models

from ..services import CURRENT_RUN, is_live, run_picker, show_status

LOCAL_PATH = "a local path…"
SETTLE_S = 0.3  # after Pause or Stop, wait this long for the step in flight so the page shows the outcome


def _model_config() -> ModelConfig:
    bundled = list(list_bundled_models())
    options = bundled + [LOCAL_PATH]
    choice = st.selectbox("Model", options, index=options.index(DEFAULT_MODEL) if DEFAULT_MODEL in options else 0,
                          key="run.model", format_func=lambda m: m if m == LOCAL_PATH else f"{m} (bundled)")
    # Inside a form widgets do not rerun, so the path box is always shown; it counts with LOCAL_PATH only.
    path = st.text_input("Local model path (a directory or a .gguf file), used with 'a local path…'",
                         key="run.model_path")
    name = path.strip() if choice == LOCAL_PATH else choice
    with st.expander("Device and precision"):
        cols = st.columns(4)
        device = cols[0].selectbox("Device", ["auto", "cpu", "cuda"], key="run.device")
        dtype = cols[1].selectbox("Dtype", ["auto", "float32", "bfloat16"], key="run.dtype")
        quantization = cols[2].selectbox("Quantization", ["auto", "none", "nf4"], key="run.quantization")
        max_context = cols[3].number_input("Max context (0 = model's own)", 0, 1_000_000, 0, key="run.max_context")
    return ModelConfig(name=name, device=device, dtype=dtype, quantization=quantization,
                       max_context=int(max_context) or None)


def _search_config() -> SearchConfig:
    d = SearchConfig()
    cols = st.columns(4)
    alpha = cols[0].number_input("alpha", 0.0, 1e6, d.alpha, key="run.alpha", help="weight of P(D) against I(D)")
    t0 = cols[1].number_input("T_0", 1e-6, 1e6, d.t0, key="run.t0", help="initial temperature")
    t_min = cols[2].number_input("T_min", 1e-6, 1e6, d.t_min, format="%.4f", key="run.t_min")
    beta = cols[3].number_input("beta", 0.0, 100.0, d.beta, key="run.beta", help="T = max(T_min, T_0/(1+beta·log n))")
    cols = st.columns(4)
    k_init = cols[0].number_input("K (random initial labels)", 1, 10_000, d.k_init, key="run.k_init")
    steps = cols[1].number_input("Steps", 1, 1_000_000, d.steps, key="run.steps")
    seed = cols[2].number_input("Seed", 0, 2**31 - 1, d.seed, key="run.seed")
    with st.expander("More search settings"):
        cols = st.columns(3)
        calibration = cols[0].selectbox("Calibration", CALIBRATIONS, key="run.calibration")
        scorer = cols[1].selectbox("Scorer", SCORERS, key="run.scorer")
        use_consistency = cols[2].checkbox("Use consistency (I(D) and fixes)", True, key="run.consistency")
    return SearchConfig(alpha=alpha, t0=t0, t_min=t_min, beta=beta, k_init=int(k_init), steps=int(steps),
                        seed=int(seed), calibration=calibration, scorer=scorer, use_consistency=use_consistency)


def _start_form(manager: RunManager) -> None:
    stored = manager.store.datasets()
    if not len(stored):
        st.info("No data yet: load a sample or a table on the Data page first.")
        return
    ids = [int(d) for d in stored["dataset_id"]][::-1]
    rows = {int(r["dataset_id"]): r for _, r in stored.iterrows()}
    tasks = {d: manager.store.dataset_task(d)["name"] for d in ids}
    with st.form("run.form"):
        # the task comes with the dataset: it was fixed when the data was loaded
        dataset_id = st.selectbox("Dataset and task", ids, key="run.dataset", format_func=lambda d: (
            f"#{d} {rows[d]['name']} · task {tasks[d]} · {rows[d]['n_examples']} examples"))
        name = st.text_input("Run name (optional)", key="run.name")
        model = _model_config()
        search = _search_config()
        submitted = st.form_submit_button("Start", type="primary")
    if submitted:
        if not model.name:
            st.error("Enter the model's local path.")
            return
        try:
            config = RunConfig(task=tasks[dataset_id],
                               dataset=str(rows[dataset_id]["source"] or rows[dataset_id]["name"]),
                               search=search, model=model)
            run_id = manager.start_run(dataset_id, config, name=name)
        except (ValueError, KeyError) as error:
            st.error(f"Could not start: {error}")
            return
        st.session_state[CURRENT_RUN] = run_id
        # kept in the session: the live status below reruns the page as soon as the run's state moves
        st.session_state["run.started"] = run_id


def _settle(manager: RunManager, run_id: int) -> None:
    """After Pause or Stop, let the step in flight finish so the page shows the outcome, not 'running'."""
    try:
        manager.wait(run_id, timeout=SETTLE_S, until=lambda s: s["state"] not in ("running", "loading"))
    except TimeoutError:
        pass  # a long model step: the live status shows the pause when it lands


def _controls(manager: RunManager, run_id: int, status: dict) -> None:
    live = status["state"] in ("loading", "running")
    done = status["state"] == "finished"
    # Callbacks run before the rerun the click starts, so that one rerun already draws the new state.
    actions = {
        "Pause": (lambda: (manager.pause(run_id), _settle(manager, run_id)), not live),
        "Step 1": (lambda: manager.step(run_id, 1), done),
        "Step 10": (lambda: manager.step(run_id, 10), done),
        "Resume": (lambda: manager.resume(run_id), done or status["state"] == "running"),
        "Stop": (lambda: (manager.stop(run_id), _settle(manager, run_id)), not status["active"]),
    }
    for col, (label, (act, disabled)) in zip(st.columns(len(actions)), actions.items()):
        col.button(label, key=f"run.{label.lower().replace(' ', '')}", disabled=disabled, width="stretch", on_click=act)


def render_run(manager: RunManager) -> None:
    st.title("Run")
    with st.expander("Start a new run", expanded=not len(manager.store.runs())):
        _start_form(manager)
    st.subheader("Current run")
    run_id = run_picker(manager, "run", label="Run (any earlier run can be reopened)")
    if run_id is None:
        return
    if st.session_state.get("run.started") == run_id:
        st.success(f"Started run #{run_id}; the model loads in the background, then the search runs.")
    status = manager.status(run_id)
    _controls(manager, run_id, status)

    @st.fragment(run_every=1.0 if is_live(status) else None)
    def live_status() -> None:
        now = show_status(manager, run_id)
        if now["state"] != status["state"] or is_live(now) != is_live(status):
            st.rerun(scope="app")  # update which buttons apply, and start or stop refreshing

    live_status()
    config = manager.store.run(run_id)["config"]
    with st.expander("Settings of this run"):
        st.json(config)
