"""The plugin manager and the registries: entry points, loud failures, did-you-mean, lazy imports."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.errors import ConfigError, UnknownPluginError
from harness.hookspecs import hookimpl
from harness.interfaces import Generator
from harness.plugin.manager import create_plugin_manager
from harness.plugin.registry import DuplicatePluginError, Registry

BENCH = [sys.executable, "-c", "from harness.cli import main; main()"]


def test_builtins_register_through_our_own_entry_points(plugins):
    infos = {i.name: i for i in plugins.infos}
    for kind in ("datasets", "generators", "classifiers", "filters"):
        assert infos[kind].distribution == "bench-bias-loops"
        assert f"register_{kind}" in infos[kind].hooks
    assert "colored-mnist" in plugins.registry("datasets").names()
    assert "dcgan" in plugins.registry("generators").names()


def test_a_name_a_builtin_holds_stays_the_builtins_and_the_clash_is_reported():
    class Twice:
        @hookimpl
        def register_generators(self, register):
            register("dcgan", "somewhere:Else")
            register("twice-own", "somewhere:Else")

    pm = create_plugin_manager(extra_plugins=(Twice(),))
    assert pm.registry("generators").entry("dcgan")[0].plugin == "generators"  # the built-in
    assert pm.registry("generators").entry("twice-own")[0].plugin == "Twice"  # the rest of it works
    (info,) = pm.failed
    assert info.name == "Twice" and "generator 'dcgan' is not used: a built-in generator has that name" in info.problem


def test_two_builtins_with_one_name_are_a_packaging_bug():
    reg = Registry("generators", Generator)
    reg.claim("x", "a:A", plugin="one", builtin=True)
    with pytest.raises(DuplicatePluginError, match="registered twice"):
        reg.claim("x", "b:B", plugin="two", builtin=True)


def test_a_name_two_other_plugins_register_is_nobodys():
    def plugin(name):
        class P:
            @hookimpl
            def register_generators(self, register):
                register("shared-gan", f"{name}:Gan")

        P.__name__ = name
        return P()

    pm = create_plugin_manager(extra_plugins=(plugin("first"), plugin("second")))
    assert "shared-gan" not in pm.registry("generators").names()
    with pytest.raises(UnknownPluginError, match="registered by plugin 'first' .* and plugin 'second'"):
        pm.registry("generators").get("shared-gan")
    assert {i.name for i in pm.failed} == {"first", "second"}


def test_a_misspelled_hook_is_reported_and_the_plugin_unregistered():
    class Typo:
        @hookimpl
        def register_generator(self, register):  # missing "s"
            register("typo-gan", "somewhere:Else")

    pm = create_plugin_manager(extra_plugins=(Typo(),))
    (info,) = pm.failed
    assert "unknown hook 'register_generator' (did you mean 'register_generators'?)" in info.problem
    assert pm.pm.get_plugin("Typo") is None and "dcgan" in pm.registry("generators").names()


def test_a_registration_hook_that_raises_is_reported():
    class Raises:
        @hookimpl
        def register_filters(self, register):
            register("raises-early", "somewhere:Else")
            raise RuntimeError("boom")

    pm = create_plugin_manager(extra_plugins=(Raises(),))
    assert "register_filters raised RuntimeError: boom" in pm.failed[0].problem
    assert "raises-early" not in pm.registry("filters").names()


def test_unknown_name_says_did_you_mean_and_lists_choices(plugins):
    with pytest.raises(UnknownPluginError) as err:
        plugins.registry("classifiers").get("lenett")
    assert "Did you mean 'lenet'" in str(err.value) and "timm:<name>" in str(err.value)


def test_family_names_resolve_with_their_variant(plugins):
    cls, variant = plugins.registry("classifiers").get("timm:resnet18")
    assert variant == "resnet18"
    with pytest.raises(UnknownPluginError):
        plugins.registry("classifiers").get("timm:")


def test_lazy_targets_must_subclass_the_kind():
    reg = Registry("generators", Generator)
    reg.register("odd", "harness.errors:BenchError")
    with pytest.raises(ConfigError, match="not a subclass"):
        reg.get("odd")
    reg.register("gone", "no_such_module_xyz:Thing")
    with pytest.raises(UnknownPluginError, match="cannot be imported"):
        reg.get("gone")


def test_a_broken_entry_point_is_reported_not_fatal(monkeypatch):
    import importlib.metadata as md

    broken = md.EntryPoint(name="broken", value="no_such_module_xyz", group="bench")
    real = md.entry_points

    def fake(**kw):
        eps = list(real(**kw))
        return eps + [broken] if kw.get("group") == "bench" else eps

    monkeypatch.setattr(md, "entry_points", fake)
    pm = create_plugin_manager()
    failed = {i.name: i for i in pm.failed}
    assert "broken" in failed and "ModuleNotFoundError" in failed["broken"].problem
    assert "dcgan" in pm.registry("generators").names()  # the rest still works


@pytest.mark.parametrize("argv", [["--help"], ["list", "generators"], ["plugins"]])
def test_cli_without_torch(argv):
    code = (
        "import sys; from typer.testing import CliRunner; from harness.cli import app; "
        f"r = CliRunner().invoke(app, {argv!r}); assert r.exit_code == 0, r.output; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------------- installed


HOSTILE = "[/][bold red]x[/bold red][/]"

#: Tiny third-party distributions, each broken in one way: (distribution, entry point, module, module source).
BROKEN = {
    "bench-bad-import": ("bad_import", "bad_import", "raise ImportError(\"cannot import name 'Gone' from 'torch'\")"),
    "bench-missing-module": ("missing_module", "no_such_module_xyz", None),
    "bench-bad-hook": ("bad_hook", "bad_hook", """
        from harness import hookimpl

        @hookimpl
        def register_generator(register):
            register("typo-gan", "bad_hook:Gan")
    """),
    "bench-dup-name": ("dup_name", "dup_name", """
        from harness import hookimpl

        @hookimpl
        def register_generators(register):
            register("dcgan", "dup_name.gan:Gan")
            register("dup-own", "bench_example.generator:ClassMean")
            register("lazy-broken", "dup_name.gan:Gan")
    """),
    f"bench-hostile{HOSTILE}": ("hostile", "hostile", f"""
        from harness import hookimpl

        @hookimpl
        def register_datasets(register):
            register("{HOSTILE}", "no_such_module_xyz:Data")
    """),
}


def make_distribution(site: Path, dist: str, ep_name: str, module: str, source: str | None) -> None:
    """A distribution as pip leaves it: ``*.dist-info`` with METADATA and entry_points.txt, and its module."""
    info = site / f"{dist.replace('-', '_').replace('[', '').replace(']', '').replace('/', '')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[bench]\n{ep_name} = {module}\n")
    if source is not None:
        (site / module).mkdir()
        (site / module / "__init__.py").write_text(textwrap.dedent(source))


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory):
    """A folder of broken plugin distributions (one per way of breaking), and the environment that puts it on
    sys.path, as ``pip install --target`` would."""
    site = tmp_path_factory.mktemp("site")
    for dist, (ep_name, module, source) in BROKEN.items():
        make_distribution(site, dist, ep_name, module, source)
    (site / "dup_name" / "gan.py").write_text("import no_such_dependency_xyz\n")  # a lazy target that fails
    example = Path(__file__).parent / "example_plugin"
    path = os.pathsep.join([str(site), str(example), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "400"}


def bench(env, *args):
    return subprocess.run(BENCH + list(args), capture_output=True, text=True, env=env, timeout=300, check=False)


def assert_one_line(proc, code=2):
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_bench_plugins_lists_every_broken_plugin_and_exits_0(broken_site):
    proc = bench(broken_site, "plugins")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    rows = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.count("│") > 2}
    assert "failed to import: ImportError: cannot import name 'Gone' from 'torch'" in rows["bad_import"]
    assert "fix or uninstall bench-bad-import" in rows["bad_import"]
    assert "failed to import: ModuleNotFoundError: No module named 'no_such_module_xyz'" in rows["missing_module"]
    assert "unknown hook 'register_generator' (did you mean 'register_generators'?)" in rows["bad_hook"]
    assert "generator 'dcgan' is not used: a built-in generator has that name" in rows["dup_name"]
    assert f"bench-hostile{HOSTILE}" in rows["hostile"]  # printed as text, not read as markup
    assert "bench-bias-loops" in rows["generators"] and "register_generators" in rows["generators"]


def test_bench_list_warns_one_line_per_broken_plugin_and_lists_the_rest(broken_site):
    proc = bench(broken_site, "list", "generators")
    assert proc.returncode == 0, proc.stderr
    names = proc.stdout.split()
    assert "dcgan" in names and "dup-own" in names and "typo-gan" not in names
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 4 and all(w.startswith("warning: plugin ") for w in warnings), warnings
    assert [w for w in warnings if "bench-dup-name" in w and "dcgan" in w]
    datasets = bench(broken_site, "list", "datasets")
    assert HOSTILE in datasets.stdout.splitlines()


@pytest.mark.parametrize(
    "args, message",
    [
        (["-g", "typo-gan"], ("unknown hook 'register_generator' (did you mean 'register_generators'?); "
                              "fix or uninstall bench-bad-hook")),
        (["-g", "typo-gan"], ("failed to import: ImportError: cannot import name 'Gone' from 'torch'; "
                              "fix or uninstall bench-bad-import")),
        (["-g", "typo-gan"], "No module named 'no_such_module_xyz'; fix or uninstall bench-missing-module"),
        (["-g", "lazy-broken"], ("generator 'lazy-broken' from bench-dup-name cannot be imported "
                                 "(ModuleNotFoundError: No module named 'no_such_dependency_xyz'); "
                                 "fix or uninstall bench-dup-name")),
        (["-d", HOSTILE], "cannot be imported"),
    ],
)
def test_bench_run_with_a_broken_plugins_name_is_one_line(broken_site, tmp_path, args, message):
    proc = bench(broken_site, "run", *args, "--out", str(tmp_path), "--dry-run")
    assert_one_line(proc)
    assert message in proc.stderr


def test_a_name_a_builtin_holds_runs_the_builtin(broken_site, tmp_path):
    proc = bench(broken_site, "run", "-g", "dcgan", "--generations", "1", "--out", str(tmp_path), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert '"name": "dcgan"' in proc.stdout
