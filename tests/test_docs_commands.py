"""The commands the README and docs/*.md show in ```bash blocks cannot go stale: the cheap ones run for real
(`diffsynth families`, `flags`, `params --from-args`, `preset`, `plan`), in-process, in a scratch folder; the
expensive ones (`make run`, `dvc repro`, `dvc exp run`, `accelerate launch`, `mlflow ui`, `diffsynth train`, ...)
are parsed by the real command-line parsers (ours, DVC's, accelerate's, MLflow's) without running, and every file
they name, every `-S`/`--set-param` key and every DVC stage must exist. A block preceded by SKIP_MARKER is not
checked (keep those rare). Also: docs/flags.md's flag table is `diffsynth flags` output."""
from __future__ import annotations

import contextlib
import glob
import importlib.util
import io
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import DEFAULT_PARAMS, DEFAULT_PARAMS_TEXT, REPO

SKIP_MARKER = "<!-- docs-commands: skip -->"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# run for real: cheap, no weights, no network (preset and plan work in the scratch folder)
RUN = {"families", "flags", "params", "preset", "plan"}
# options whose value is written by the command (it need not exist yet, and later commands may read it)
OUTPUT_OPTIONS = {"--out", "--output_path", "--report", "--json"}
OPERATORS = {"&&", "||", ";", "|", "&"}
REDIRECTS = {">", ">>", ">&", "<"}
PATH_LIKE = re.compile(r"^(\./)?[\w.*{}-]+(/[\w.*{},-]+)+/?$|^[\w-]+\.(ya?ml|py|json|md|csv|safetensors|toml)$")


def bash_blocks(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every ```bash block, except those right after SKIP_MARKER."""
    lines, blocks, i = path.read_text().splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            if not (i > 0 and lines[i - 1].strip() == SKIP_MARKER):
                blocks.append((i + 1, "\n".join(lines[i + 1:end])))
            i = end
        i += 1
    return blocks


def simple_commands(block: str) -> list[tuple[list[str], str | None]]:
    """Each simple command of a block as (argv, the file its stdout is redirected to), env assignments dropped."""
    tokens = []
    for line in block.replace("\\\n", " ").splitlines():  # a newline ends a command
        lex = shlex.shlex(line, posix=True, punctuation_chars="&|;<>")
        lex.whitespace_split, lex.commenters = True, "#"
        tokens += [*lex, "\n"]
    out, argv, redirect, pending = [], [], None, None
    for token in tokens:
        if token in OPERATORS or token == "\n":
            if argv:
                out.append((argv, redirect))
            argv, redirect = [], None
        elif token in REDIRECTS:
            pending = token
        elif pending:
            redirect, pending = (token if pending in (">", ">>") else redirect), None
        elif not argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", token):
            continue  # VAR=value before a command
        else:
            argv.append(token.replace("$PWD", str(REPO)))
    return out


def all_commands():
    for path in DOCS:
        for line, block in bash_blocks(path):
            for argv, redirect in simple_commands(block):
                yield pytest.param(argv, redirect, id=f"{path.relative_to(REPO)}:{line}:{' '.join(argv)[:60]}")


COMMANDS = list(all_commands())
IGNORED_ROOTS = {line.strip().strip("/") for line in (REPO / ".gitignore").read_text().splitlines()
                 if line.strip() and not line.startswith("#") and "*" not in line}


def check_paths(argv: list[str], produced: set[str]) -> None:
    """Every repository path a command names exists; folders the pipeline writes (git-ignored: outputs/, data/,
    models/, ...) and paths an earlier command of the docs writes are exempt."""
    for prev, token in zip(["", *argv], argv):
        value = token.split("=", 1)[1] if token.startswith("--") and "=" in token else token
        if prev in OUTPUT_OPTIONS or token.startswith("-") or ":" in value or "=" in value:
            continue
        if not PATH_LIKE.match(value):
            continue
        rel = value.removeprefix("./").rstrip("/")
        if rel.split("/")[0] in IGNORED_ROOTS or any(rel == p or rel.startswith(p + "/") for p in produced):
            continue
        assert glob.glob(str(REPO / rel)), f"{value} does not exist (named in `{' '.join(argv)}`)"


def check_set_params(values: list[str]) -> None:
    for item in values or []:
        key = item.split("=", 1)[0]
        section, _, name = key.partition(".")
        assert section in DEFAULT_PARAMS and name in DEFAULT_PARAMS[section], f"-S {key}: not a params.yaml key"


def check_dvc(args: list[str]) -> None:
    from dvc.cli import parse_args
    parsed = parse_args(args)  # argparse: an unknown subcommand or option exits
    check_set_params(getattr(parsed, "set_param", None))
    if parsed.cmd == "repro":
        stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
        for target in parsed.targets:
            assert target in stages, f"dvc repro {target}: no such stage in dvc.yaml"


def check_mlflow(args: list[str]) -> None:
    import click
    from mlflow.cli import cli
    command = cli.get_command(click.Context(cli), args[0])
    assert command is not None, f"mlflow {args[0]}: no such command"
    command.make_context(args[0], args[1:])  # click parses every option, runs nothing


def check_train_args(args: list[str]) -> None:
    from diffsynth.command_line import config_from_args
    config_from_args(args)


def check_accelerate(args: list[str]) -> None:
    from accelerate.commands.launch import launch_command_parser
    assert args[:1] == ["launch"], args
    parsed = launch_command_parser().parse_args(args[1:])
    if parsed.config_file:
        assert (REPO / parsed.config_file).is_file(), parsed.config_file
    if parsed.module:
        assert importlib.util.find_spec(parsed.training_script), f"-m {parsed.training_script}: no such module"
    else:
        assert (REPO / parsed.training_script).is_file(), parsed.training_script
    if parsed.module and parsed.training_script == "diffsynth.train":
        check_train_args(parsed.training_script_args)


def run_diffsynth(args: list[str], redirect: str | None, workdir: Path, monkeypatch) -> None:
    """In-process `diffsynth ...`: the cheap subcommands run, the others stop after parsing their arguments."""
    from diffsynth import cli
    from diffsynth.command_line import config_from_args
    monkeypatch.setattr(cli, "cmd_train", lambda argv: bool(config_from_args(argv)) and 0)
    monkeypatch.setattr(cli, "cmd_data_validate", lambda a: bool(config_from_args(a.rest, check=False)) and 0)
    for name in ("cmd_export", "cmd_summary", "cmd_tiny_model"):
        monkeypatch.setattr(cli, name, lambda a: 0)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        try:
            code = cli.main(args)
        except SystemExit as e:  # argparse: --help, or a bad argument
            code = e.code
    assert code == 0, f"diffsynth {' '.join(args)} exited {code}:\n{stdout.getvalue()[-2000:]}"
    if redirect:
        (workdir / redirect).write_text(stdout.getvalue())
        if redirect.endswith("params.yaml"):
            from diffsynth.config import load_params
            load_params(workdir / redirect)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A scratch project: the committed params.yaml, the repository's presets and configs."""
    (tmp_path / "params.yaml").write_text(DEFAULT_PARAMS_TEXT)
    for name in ("presets", "configs", "dvc.yaml", "stages"):
        (tmp_path / name).symlink_to(REPO / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIFFSYNTH_PROGRESS", "0")
    return tmp_path


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 20
    for must in (["make", "run"], ["make", "test"], ["diffsynth", "preset"], ["dvc", "exp"], ["mlflow", "ui"]):
        assert any(p.values[0][:2] == must for p in COMMANDS), f"no `{' '.join(must)}` in the docs"


@pytest.mark.parametrize("argv, redirect", COMMANDS)
def test_docs_command(argv, redirect, workdir, monkeypatch):
    produced = {v.removeprefix("./") for p in COMMANDS for a, v in zip(p.values[0], p.values[0][1:])
                if a in OUTPUT_OPTIONS} | {p.values[1] for p in COMMANDS if p.values[1]}
    program, args = argv[0], argv[1:]
    if program not in ("diffsynth",) or (args[:1] and args[0] not in ("preset", "plan")):
        check_paths(argv, produced)
    if program == "diffsynth":
        run_diffsynth(args, redirect, workdir, monkeypatch)
    elif program == "make":
        targets = re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M)
        assert all(t in targets for t in args), f"make {' '.join(args)}: targets are {targets}"
    elif program == "dvc":
        check_dvc(args)
    elif program == "mlflow":
        check_mlflow(args)
    elif program == "accelerate":
        check_accelerate(args)
    elif program == "source":
        assert args == [".venv/bin/activate"], args  # the venv `make` creates
    elif program == "export":
        assert all(re.fullmatch(r"[A-Z_][A-Z0-9_]*=.+", a) for a in args), args
    else:
        assert shutil.which(program), f"`{program}` is not a command here"


def test_flag_table_is_the_generated_one():
    """docs/flags.md's flag table is `diffsynth flags` output; regenerate it when a flag changes."""
    from diffsynth.command_line import flag_table
    page = (REPO / "docs" / "flags.md").read_text()
    start, end = page.index("<!-- flag-table -->\n"), page.index("<!-- /flag-table -->")
    assert page[start + len("<!-- flag-table -->\n"):end].strip() == flag_table().strip()
    for flag in ("--dataset_base_path", "--lora_target_modules", "--use_gradient_checkpointing", "--save_steps",
                 "--align_to_opensource_format", "--max_timestep_boundary", "--fp8_models", "--enable_wandb_log"):
        assert f"`{flag}`" in page


def test_docs_links_resolve():
    """Every relative link of the README and the docs pages names a file that exists."""
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.relative_to(REPO)}: link to missing {target}"


def test_the_front_page_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
