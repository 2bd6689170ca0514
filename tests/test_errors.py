"""One root for user errors: every part's own error is a UserError, one line, and exits 2 through the CLI."""
import pytest

import deqdist.main.config
from deqdist import cli
from deqdist.config import ConfigError
from deqdist.data import DataError
from deqdist.errors import UserError
from deqdist.runtime.platform import PlatformError
from deqdist.store.rundir import RunDirError


@pytest.mark.parametrize("cls", [ConfigError, DataError, RunDirError, PlatformError, cli.UsageError])
def test_every_user_error_has_the_one_root(cls):
    e = cls("a problem\n  spread over\tlines")
    assert isinstance(e, UserError) and str(e) == "a problem spread over lines"


def test_the_cli_maps_the_root_to_exit_2(monkeypatch, capsys):
    def fail(args):
        raise UserError("nothing can be done; do something else")

    monkeypatch.setattr(deqdist.main.config, "run", fail)  # build_parsers binds the handlers when main calls it
    assert cli.main(["config"]) == 2
    assert capsys.readouterr().err == "deqdist config: error: nothing can be done; do something else\n"
