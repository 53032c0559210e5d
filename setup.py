"""Build hook (the rest is in pyproject.toml): the wheel carries man pages and shell
completion scripts made at build time from the click commands being built
(p2vimage/cli/manpage.py, p2vimage/cli/completion.py), installed under the environment's
share/: man/man1, bash-completion/completions, zsh/site-functions, fish/vendor_completions.d.
So they never drift from ``--help``. Building imports the CLI: click and tqdm are build
requirements for that (pyproject.toml), nothing else is imported until a verb runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import Distribution, setup

HERE = Path(__file__).resolve().parent
_install_data = Distribution().get_command_class("install_data")


class install_generated_data(_install_data):
    """install_data with the generated files as its data files."""

    def run(self) -> None:
        sys.path.insert(0, str(HERE))  # the p2vimage being built, not an installed one
        from p2vimage.cli import completion, manpage
        from p2vimage.cli.main import cli

        out = Path(self.get_finalized_command("build").build_base) / "p2vimage-share"
        pages = manpage.write(out / "man1")
        files = [("share/man/man1", sorted(str(p) for p in pages))]
        for shell, (directory, name) in completion.SCRIPTS.items():
            path = out / shell / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(completion.script(cli, shell))
            files.append((directory, [str(path)]))
        self.data_files = files
        super().run()


# The placeholder entry makes `install` run install_data, which fills it in.
setup(cmdclass={"install_data": install_generated_data}, data_files=[("share/man/man1", [])])
