"""The Export page's fine-tuning panel: train the run's model on its labels (a logistic head or LoRA),
watch progress with an ETA and the loss curve, and see every model fine-tuned beside this database.
The training itself runs in the engine's background thread (runs/finetune_jobs.py); this only draws."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from icm_engine.core.config import LearnerConfig
from icm_engine.core.settings import settings
from icm_engine.runs.finetune import finetuned_models
from icm_engine.runs.manager import RunManager

JOB = "export.finetune_job"
LEARNER_NOTES = {"head": "a logistic head on the frozen model's hidden states (seconds on CPU)",
                 "lora": "LoRA adapters through TRL (minutes on CPU for a few hundred examples)"}


def loss_figure(losses: list[float], title: str) -> go.Figure:
    fig = go.Figure(go.Scatter(x=list(range(1, len(losses) + 1)), y=losses, mode="lines+markers"))
    fig.update_layout(title=title, xaxis_title="training step", yaxis_title="training loss", height=300,
                      margin=dict(l=40, r=20, t=50, b=40))
    return fig


def _start(manager: RunManager, run_id: int) -> None:
    learner = st.session_state["export.learner"]
    try:
        st.session_state[JOB] = (run_id, manager.finetunes.start(run_id, LearnerConfig(learner=learner)))
    except (ValueError, KeyError) as error:
        st.session_state[JOB] = None
        st.session_state["export.finetune_error"] = str(error)


def _job_status(manager: RunManager, run_id: int) -> None:
    held = st.session_state.get(JOB)
    if not held or held[0] != run_id:
        return
    job = manager.finetunes.job(held[1])
    running = job.state not in ("finished", "failed")

    @st.fragment(run_every=1.0 if running else None)
    def live() -> None:
        if job.state == "failed":
            st.error(f"Fine-tuning failed: {job.error}")
        elif job.state == "finished":
            p = job.result
            st.success(f"Saved {p['id']} ({p['kind']}): trained on {p['n_labels']} labels in {p['seconds']:.1f} s; "
                       f"loss {p['loss_curve'][0]:.4f} → {p['loss_curve'][-1]:.4f}; agreement with its training labels "
                       f"{p['train_accuracy']:.3f}. Label new data with: icm predict --finetuned {p['id']} --data FILE")
        else:
            eta = job.eta_seconds
            text = (f"{job.state} {job.done} / {job.total} · {job.message}" if job.total else f"{job.state}…") + \
                   (f" · about {eta:.0f} s left" if eta is not None else "")
            st.progress(job.done / job.total if job.total else 0.0, text=text)
        losses = job.result["loss_curve"] if job.result else job.losses
        if losses:
            st.plotly_chart(loss_figure(losses, f"Training loss ({job.config.learner})"), key="export.loss")
        if not running and st.session_state.get("export.finetune_seen") != held:
            st.session_state["export.finetune_seen"] = held
            st.rerun(scope="app")  # the list of fine-tuned models below now holds this one

    live()


def render_finetune(manager: RunManager, run_id: int) -> None:
    st.subheader("Fine-tune on these labels")
    learner = next(s for s in settings(LearnerConfig) if s.name == "learner")
    left, right = st.columns([2, 1])
    left.selectbox(learner.label, learner.choices, key="export.learner", help=learner.help,
                   format_func=lambda k: f"{k}: {LEARNER_NOTES[k]}")
    right.button("Fine-tune", key="export.finetune", type="primary", on_click=_start, args=(manager, run_id),
                 width="stretch", help="train the run's model on its labels; saved beside the database")
    if st.session_state.get("export.finetune_error"):
        st.error(f"Could not start: {st.session_state.pop('export.finetune_error')}")
    _job_status(manager, run_id)
    saved = finetuned_models(manager.db_path) if manager.db_path != ":memory:" else []
    if saved:
        st.caption("Models fine-tuned beside this database (also listed by `icm models`):")
        st.dataframe(pd.DataFrame([{"id": p["id"], "learner": p["kind"], "run": p.get("run_id"), "labels": p["n_labels"],
                                    "first loss": p["loss_curve"][0], "last loss": p["loss_curve"][-1],
                                    "seconds": p["seconds"], "created": p["created_at"]} for p in saved]),
                     hide_index=True)
