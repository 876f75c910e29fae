"""Without a working Ray the engine is refused in one line that says how to install it.

These need no Ray (a broken stand-in for it is put first on the path), so they are not marked
`ray`: a test run without the extra keeps them.
"""

from __future__ import annotations

from pathlib import Path

from batchrun.ray.install import NO_RAY

from .helpers import clean_env, prompts_csv, run_cli


def broken(tmp_path: Path, module: str) -> dict[str, str]:
    """An environment whose `module` (ray, or ray.data) fails to import, as a missing one does."""
    hide = tmp_path / "no_ray"
    folder = hide.joinpath(*module.split("."))
    folder.mkdir(parents=True)
    (hide / "ray" / "__init__.py").touch()
    (folder / "__init__.py").write_text(f"raise ImportError('No module named {module}')\n")
    return clean_env(PYTHONPATH=str(hide))


def test_without_ray_the_engine_is_refused_with_how_to_install_it(tmp_path: Path) -> None:
    src = prompts_csv(tmp_path / "in.csv", 3)
    result = run_cli("run", "--input", src, "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                     "--engine", "ray", env=broken(tmp_path, "ray"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "batchrun: --engine ray needs Ray: pip install 'batchrun[ray]'"]


def test_a_ray_without_its_data_library_is_refused_with_the_same_line(tmp_path: Path) -> None:
    # An output folder is read and written by Ray Data itself: it is asked for before anything.
    src = prompts_csv(tmp_path / "in.csv", 3)
    result = run_cli("run", "--input", src, "--output", tmp_path / "answers", "--base-url",
                     "http://127.0.0.1:9/v1", "--model", "m", "--engine", "ray",
                     env=broken(tmp_path, "ray.data"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"batchrun: {NO_RAY}"]
    assert not (tmp_path / "answers").exists()
