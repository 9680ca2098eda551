"""What became of a steering action: the worker applies it between two steps, so a page submits
it, waits briefly (most land at once), and then polls until the worker answers."""
from __future__ import annotations

import concurrent.futures

import streamlit as st

ANSWER_WAIT_S = 0.5  # how long the page waits for the worker before saying "queued"
POLL_SECONDS = 0.5  # then how often it looks again


def outcome(future: concurrent.futures.Future, what: str) -> None:
    """Say what became of one action: applied (with its event), refused, or still waiting for the worker."""
    if not future.done():
        st.info(f"{what}: queued; it applies when the step in flight ends (or once the model has loaded).")
    elif future.exception() is not None:  # refused by the search, e.g. pinning an excluded example
        st.error(f"{what} was refused: {future.exception()}")
    else:
        record = future.result()
        st.success(f"{what}: recorded as a '{record.kind}' event at iteration {record.iteration}.")


def submit(key: str, future: concurrent.futures.Future, what: str) -> None:
    """Wait briefly (most actions land at once), then leave the rest to outcomes(), which polls."""
    try:
        future.result(timeout=ANSWER_WAIT_S)
    except Exception:  # timeout or refusal: outcome() tells which
        pass
    st.session_state[key] = [(future, what)]


def outcomes(key: str) -> None:
    pending = st.session_state.get(key, [])
    waiting = any(not f.done() for f, _ in pending)

    # A model step can take seconds: poll until the worker has answered, then redraw the page once.
    @st.fragment(run_every=POLL_SECONDS if waiting else None)
    def poll() -> None:
        for future, what in pending:
            outcome(future, what)
        if waiting and all(f.done() for f, _ in pending):
            st.rerun(scope="app")

    poll()
