"""What several subcommands share: the flags built from the config declarations, the database
flag, loading data and a model with one-line refusals, writing a file whole."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..backends.server_protocol import ENGINE_PREFIXES, make_server_spec
from ..core.config import PRESETS, LearnerConfig, ModelConfig, SearchConfig, preset
from ..core.settings import Setting, settings
from ..store.location import default_db


def add_db_option(parser) -> None:
    parser.add_argument("--db", default=default_db())


def add_setting_flag(group, s: Setting, default, help_text: str | None = None) -> None:
    """One flag for one declared setting: a switch for a bool, a choice for a named value, a number else."""
    help_text = s.help if help_text is None else help_text
    if s.kind is bool:
        group.add_argument(s.flag, dest=s.option, action=argparse.BooleanOptionalAction, default=default, help=help_text)
    elif s.choices:
        group.add_argument(s.flag, dest=s.option, choices=s.choices, default=default, help=help_text)
    else:
        group.add_argument(s.flag, dest=s.option, type=s.kind, default=default, help=help_text)


def search_setting(name: str) -> Setting:
    return next(s for s in settings(SearchConfig) if s.name == name)


def add_search_options(parser: argparse.ArgumentParser) -> None:
    """One flag per SearchConfig field, from its declaration; an unset flag (None) takes the preset's value."""
    defaults = SearchConfig()
    group = parser.add_argument_group("search (defaults: docs/objectives.md; the paper's with --preset paper)")
    group.add_argument("--preset", choices=tuple(PRESETS), default="default",
                       help="named settings to start from; flags given here override them")
    for s in settings(SearchConfig):
        if s.exempt is None:
            add_setting_flag(group, s, None, f"{s.help} (default {getattr(defaults, s.name)})")
    group.add_argument("--no-consistency", dest="use_consistency", action="store_false",
                       help="the paper's ablation: no I(D), no fixes (same as --no-use-consistency)")


def given_search_settings(args) -> dict:
    """The search flags the user gave (the rest come from the preset)."""
    return {s.name: getattr(args, s.name) for s in settings(SearchConfig) if getattr(args, s.name, None) is not None}


def search_config(args) -> SearchConfig:
    try:
        return preset(args.preset, **given_search_settings(args))
    except (TypeError, ValueError) as error:
        raise SystemExit(f"icm run: {error}") from None


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The model flags every model-loading command shares (run, finalize, eval, bench), one per ModelConfig field."""
    group = parser.add_argument_group("model")
    for s in settings(ModelConfig):
        add_setting_flag(group, s, s.default)
    server = parser.add_argument_group("inference server (instead of a local model; docs/serving.md)")
    server.add_argument("--server-url", default=None, metavar="URL",
                        help="an OpenAI-compatible server's root, e.g. http://gpu-box:8000/v1 (vLLM, SGLang, llama.cpp, "
                             "llama-cpp-python); same as --model ENGINE+URL::MODEL")
    server.add_argument("--server-model", default=None, metavar="NAME", help="the model name the server serves (its /v1/models id)")
    server.add_argument("--server-engine", default="openai", choices=tuple(ENGINE_PREFIXES),
                        help="which engine serves (default openai: ask the server)")
    server.add_argument("--server-concurrency", type=int, default=None, metavar="N",
                        help="requests in flight (default 16; 1 for llama-cpp-python, which runs one at a time)")


def add_learner_options(parser: argparse.ArgumentParser, title: str, skip: tuple[str, ...] = ()) -> None:
    """One flag per LearnerConfig field (what fine-tunes: `icm finetune`, a scalable run's fold scorer)."""
    group = parser.add_argument_group(title)
    for s in settings(LearnerConfig):
        if s.name not in skip:
            add_setting_flag(group, s, s.default, f"{s.help} (default {s.default})")


def learner_config(args) -> LearnerConfig:
    try:
        return LearnerConfig(**{s.name: getattr(args, s.option) for s in settings(LearnerConfig)
                                if hasattr(args, s.option)})
    except (TypeError, ValueError) as error:
        raise SystemExit(f"icm: {error}") from None


def model_config(args) -> ModelConfig:
    if (getattr(args, "max_context", None) or 0) < 0:  # found before the model loads, not as an overflow after
        raise SystemExit(f"icm: --max-context is a number of tokens (0: the model's own window); got {args.max_context}")
    return ModelConfig(**{s.name: getattr(args, s.option) for s in settings(ModelConfig)})


def apply_server_options(args) -> None:
    """--server-url/--server-model become the model spec ENGINE+URL::MODEL, which the run stores as its model."""
    url, model = getattr(args, "server_url", None), getattr(args, "server_model", None)
    if getattr(args, "server_concurrency", None) is not None:
        if args.server_concurrency < 1:
            raise SystemExit("icm: --server-concurrency must be at least 1")
        from ..backends.openai_server import CONCURRENCY_ENV

        os.environ[CONCURRENCY_ENV] = str(args.server_concurrency)
    if url is None and model is None:
        return
    if not url or not model:
        raise SystemExit("icm: --server-url and --server-model go together (the server's URL and the model name it serves)")
    args.model = make_server_spec(url, model, args.server_engine)


def load_backend(config: ModelConfig):
    """The model `config` names, or a one-line refusal."""
    from ..runs.models import load_model

    try:
        return load_model(config)
    except (ValueError, OSError) as error:  # unknown name, a folder that holds no model
        raise SystemExit(f"icm: {error}") from None


def read_dataset(spec: str, task: str | None, limit: int | None):
    """The examples of `spec`, or a one-line refusal naming the file, line or row, and column."""
    from ..data.datasets import load_any

    try:
        return load_any(spec, task=task, limit=limit)
    except FileNotFoundError:
        raise SystemExit(f"icm: {spec}: no such file") from None
    except (ValueError, KeyError, OSError) as error:  # DatasetError is a ValueError
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        raise SystemExit(f"icm: {spec}: {message}") from None


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename over it: an interrupted export leaves
    the old file whole (a rename within a folder is atomic), never a truncated one."""
    import errno
    import secrets

    there = next(folder for folder in (path.parent, *path.parent.parents) if os.path.lexists(folder) or folder == folder.parent)
    if there.exists() and not there.is_dir():  # said in words: mkdir's own error is "File exists"
        raise NotADirectoryError(errno.ENOTDIR, f"{there} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.part"
    # os.open with 0o666 lets the umask decide the mode, as for any new file (mkstemp makes it 0600)
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
