"""Export: a run's labels as files, byte for byte what `icm export` writes."""
from __future__ import annotations

import io

import pandas as pd
import streamlit as st

from icm_engine.runs.manager import RunManager

from .. import services
from ..finetune_panel import render_finetune
from ..widgets import run_picker

FORMATS = {  # format -> (description, file suffix, mime type)
    "csv": ("CSV of every example: inputs, label, where it came from, confidence, last change", "csv", "text/csv"),
    "sft": ("JSONL for supervised fine-tuning: prompt and completion (the label word)", "sft.jsonl", "application/jsonl"),
    "preference": ("Preference JSONL for pairwise tasks: prompt, chosen, rejected", "preference.jsonl",
                   "application/jsonl"),
    "provenance": ("Provenance JSON: config, model, seed, steps and counts", "provenance.json", "application/json"),
}


def _prepare(manager: RunManager, run_id: int, fmt: str, last_seq: int) -> bytes:
    """Build the file with visible progress; big runs take a moment to read and write."""
    with st.status(f"Exporting run #{run_id} as {fmt}…", expanded=True) as box:
        bar = st.progress(0.0, text="Reading the labels and where they came from")
        frame = services.labeled_frame(manager, run_id)
        counts = frame["source"].value_counts()
        summary = ", ".join(f"{int(counts[s])} {s.replace('_', ' ')}" for s in counts.index)
        labeled = int(frame["label"].notna().sum())
        bar.progress(0.3, text=f"Writing {len(frame)} examples ({summary})")
        data = services.export_file(manager, run_id, fmt)
        bar.progress(1.0, text=f"{len(data):,} bytes")
        what = (f"all {len(frame)} examples" if fmt == "csv" else f"the {labeled} labeled examples")
        box.update(label=f"Export ready: {what}, {labeled} of {len(frame)} labeled ({summary}); {len(data):,} bytes",
                   state="complete", expanded=False)
    st.session_state["export.ready"] = {"run": run_id, "fmt": fmt, "seq": last_seq, "data": data}
    return data


def render_export(manager: RunManager) -> None:
    st.title("Export")
    run_id = run_picker(manager, "export")
    if run_id is None:
        return
    run = services.run_info(manager, run_id)
    task = services.dataset_task(manager, run["dataset_id"])
    formats = [f for f in FORMATS if f != "preference" or task.pairwise_fields is not None]
    fmt = st.radio("Format", formats, key="export.format", format_func=lambda f: f"{f}: {FORMATS[f][0]}")
    if task.pairwise_fields is None:
        st.caption(f"Preference JSONL needs a pairwise task; {task.name} is not one.")
    if run["status"] in ("running",):
        st.caption("The run is still going: an export holds the labels as of the moment it is prepared.")
    ready = st.session_state.get("export.ready")
    fresh = ready is not None and (ready["run"], ready["fmt"], ready["seq"]) == (run_id, fmt, int(run["last_seq"]))
    if st.button("Prepare file", type="primary", key="export.prepare"):
        data = _prepare(manager, run_id, fmt, int(run["last_seq"]))
        fresh = True
    elif fresh:
        data = ready["data"]
    if not fresh:
        st.caption("Prepare the file to download it.")
    else:
        _download(run_id, fmt, data)
    st.divider()
    render_finetune(manager, run_id)


def _download(run_id: int, fmt: str, data: bytes) -> None:
    suffix, mime = FORMATS[fmt][1], FORMATS[fmt][2]
    st.download_button(f"Download run{run_id}.{suffix}", data, file_name=f"run{run_id}.{suffix}", mime=mime,
                       key="export.download", on_click="ignore", type="primary")
    with st.expander("Preview", expanded=fmt == "csv"):
        if fmt == "csv":
            st.dataframe(pd.read_csv(io.BytesIO(data), dtype={"label_name": str, "source": str}).head(50), hide_index=True)
        else:
            st.code(data[:4000].decode("utf-8", errors="replace"), language="json")
