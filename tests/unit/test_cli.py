"""Command line parsing and merging with config files (reference §1.1, §1.2.4, §1.5)."""
from __future__ import annotations

import os

import pytest

from mogstored.config import cli
from mogstored.config.cli import (
    EarlyExit, Listen, Options, Service, StartupError, UsageError, load_options,
)

ARGV0 = "/usr/bin/mogstored"
ENV = {"PATH": "/usr/bin:/bin"}
TRY = "Try 'mogstored --help' or 'mogstored --usage' for more information.\n"
DEFAULT_HTTP = Listen("0.0.0.0", 7500)
DEFAULT_MGMT = Listen("0.0.0.0", 7501)


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A tmp dir as cwd with docroots d1, d2 and a symlink to d1."""
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(*argv: str, environ=ENV) -> Options:
    return load_options(list(argv), ARGV0, environ)


def startup_error(*argv: str, environ=ENV) -> str:
    with pytest.raises(StartupError) as e:
        load(*argv, environ=environ)
    return str(e.value)


def usage_error(*argv: str) -> str:
    with pytest.raises(UsageError) as e:
        load(*argv)
    return str(e.value)


def conf(root, name: str, text: str) -> str:
    path = root / name
    path.write_text(text)
    return str(path)


# --- option syntax (argp/getopt habits) ------------------------------------------------

def test_defaults(root):
    opts = load(f"--docroot={root}/d1")
    assert opts == Options(
        services=[Service(str(root / "d1"), DEFAULT_HTTP, DEFAULT_MGMT, None)],
        daemonize=False, pidfile=None, maxconns=10000, worker_processes=0,
        server="perlbal", iostat=True,
    )


def test_default_docroot_must_exist(root, monkeypatch):
    missing = str(root / "var-mogdata")  # the default, minus this machine's real /var/mogdata
    monkeypatch.setattr(cli, "DEFAULT_DOCROOT", missing)
    assert startup_error() == f"`{missing}' failed to resolve: No such file or directory"


@pytest.mark.parametrize("argv", [
    ["--docroot=d1"], ["--docroot", "d1"], ["--docr", "d1"], ["--docr=d1"],
])
def test_value_forms_and_prefixes(root, argv):
    assert load(*argv).services[0].docroot == str(root / "d1")


def test_docroot_symlink_is_resolved(root):
    assert load("--docroot=link").services[0].docroot == str(root / "d1")


def test_missing_docroot(root):
    assert startup_error("--docroot=nope") == "`nope' failed to resolve: No such file or directory"
    assert startup_error("--docroot=") == "`' failed to resolve: No such file or directory"


def test_short_options_cluster(root):
    opts = load("-ds", "--docroot=/", "--pidfile=/tmp/x.pid")
    assert opts.daemonize is True


def test_value_taken_from_next_argument_even_if_dashed(root):
    with pytest.raises(StartupError) as e:
        load("--docroot", "--multi")
    assert str(e.value) == "`--multi' failed to resolve: No such file or directory"


def test_unknown_long_option():
    assert usage_error("--bogus") == f"{ARGV0}: unrecognized option '--bogus'\n{TRY}"
    assert usage_error("--bogus=1") == f"{ARGV0}: unrecognized option '--bogus=1'\n{TRY}"


@pytest.mark.parametrize("option", ["--httpgetlisten=7502", "--iostat", "--serverbin=/x"])
def test_config_only_keys_are_unknown_options(option):
    assert "unrecognized option" in usage_error(option)


def test_no_c_short_option():
    assert usage_error("-c", "x.conf") == f"{ARGV0}: invalid option -- 'c'\n{TRY}"


def test_ambiguous_prefix():
    assert usage_error("--d") == (
        f"{ARGV0}: option '--d' is ambiguous; possibilities: '--daemonize' '--docroot' '--durable'\n{TRY}"
    )
    # hidden options take part in prefix matching
    assert "'--server' '--skipconfig'" in usage_error("--s")


def test_missing_argument():
    assert usage_error("--docroot") == f"{ARGV0}: option '--docroot' requires an argument\n{TRY}"


def test_argument_not_allowed():
    assert usage_error("--daemonize=1") == (
        f"{ARGV0}: option '--daemonize' doesn't allow an argument\n{TRY}"
    )


@pytest.mark.parametrize("argv", [["extra"], ["--", "--docroot=/"], ["-"]])
def test_positional_arguments_are_usage_errors(argv):
    assert usage_error(*argv) == cli.USAGE_TEXT


def test_help_usage_version():
    for argv in (["--help"], ["-?"], ["--he"]):
        with pytest.raises(EarlyExit) as e:
            load(*argv)
        assert (e.value.code, e.value.text) == (0, cli.HELP_TEXT)
    with pytest.raises(EarlyExit) as e:
        load("--usage")
    assert (e.value.code, e.value.text) == (0, cli.USAGE_TEXT)
    for argv in (["--version"], ["-V"]):
        with pytest.raises(EarlyExit) as e:
            load(*argv)
        assert (e.value.code, e.value.text) == (0, "mogstored 0.1.0\n")


def test_help_text_layout():
    lines = cli.HELP_TEXT.splitlines()
    assert lines[0] == "Usage: mogstored [OPTION...]"
    assert "  -d, --daemonize            Daemonize" in lines
    assert "  -V, --version              print program version" in lines
    assert all(len(line) <= 79 for line in lines)
    for hidden in ("--server", "--multi", "--worker-processes", "--skipconfig"):
        assert hidden not in cli.HELP_TEXT


def test_options_act_in_order():
    with pytest.raises(EarlyExit):
        load("--version", "--bogus")
    with pytest.raises(UsageError):
        load("--bogus", "--version")
    with pytest.raises(EarlyExit):  # operands are only complained about at the end
        load("extra", "--help")


def test_skipconfig_is_a_noop(root):
    assert load("--skipconfig", "-s", "--docroot=d1").services[0].docroot == str(root / "d1")


# --- values ----------------------------------------------------------------------------

def test_listen_options(root):
    opts = load("--docroot=d1", "--httplisten=127.0.0.1:8000", "--mgmtlisten", ":8001")
    assert opts.services[0].httplisten == Listen("127.0.0.1", 8000)
    assert opts.services[0].mgmtlisten == Listen("0.0.0.0", 8001)


@pytest.mark.parametrize("option, value", [
    ("httplisten", "localhost:80"), ("httplisten", "1.2.3:80"), ("mgmtlisten", "666.0.0.1:7501"),
])
def test_bad_listen(option, value):
    assert startup_error(f"--{option}={value}") == f"failed to parse {option}={value}"


def test_only_mgmt_means_no_http(root):
    service = load("--docroot=d1", "--mgmtlisten=7777").services[0]
    assert (service.httplisten, service.mgmtlisten) == (None, Listen("0.0.0.0", 7777))


def test_only_http_means_no_mgmt(root):
    service = load("--docroot=d1", "--httplisten=7777").services[0]
    assert (service.httplisten, service.mgmtlisten) == (Listen("0.0.0.0", 7777), None)


def test_maxconns(root):
    assert load("--docroot=d1", "--maxconns=500").maxconns == 500
    assert load("--docroot=d1", "--maxconns=0").maxconns == 10000
    assert startup_error("--maxconns=12x") == "failed to parse --maxconns=12x (invalid character: x)"


def test_worker_processes(root):
    assert load("--docroot=d1", "--worker-processes=4").worker_processes == 4
    assert startup_error("--worker-processes=4y") == (
        "failed to parse --worker-processes=4y (invalid character: y)"
    )
    assert startup_error("--worker-processes=4294967296") == (
        "--worker-processes exceeded (max=4294967295)"
    )
    assert load("--docroot=d1", "--worker-processes=4294967295").worker_processes == 4294967295


def test_worker_processes_auto(root):
    """One worker per CPU this process may run on (its affinity, not the machine's CPUs)."""
    cpus = len(os.sched_getaffinity(0))
    assert load("--docroot=d1", "--worker-processes=auto").worker_processes == cpus
    assert startup_error("--worker-processes=Auto") == (
        "failed to parse --worker-processes=Auto (invalid character: A)"
    )
    (root / "w.conf").write_text("worker_processes = auto\n")
    assert load("--config=w.conf", "--docroot=d1").worker_processes == cpus
    (root / "w3.conf").write_text("worker_processes = 3\n")
    assert load("--config=w3.conf", "--docroot=d1").worker_processes == 3
    # The command line wins, also when it asks for a single process.
    assert load("--config=w.conf", "--docroot=d1", "--worker-processes=0").worker_processes == 0


def test_server(root, capsys):
    assert load("--docroot=d1", "--server=none").server == "none"
    assert capsys.readouterr().err == ""
    assert load("--docroot=d1", "--server", "perlbal").server == "perlbal"
    assert capsys.readouterr().err == f"{ARGV0}: W: using internal HTTP for 'server = perlbal' instead\n"
    for word in ("apache", "lighttpd", "nginx", "Perlbal"):
        assert startup_error(f"--server={word}") == f"E: 'server = {word}' not understood by cmogstored"


def test_relative_pidfile_resolved_against_cwd(root):
    assert load("--docroot=d1", "--pidfile=run.pid").pidfile == str(root / "run.pid")
    assert load("--docroot=d1", "--pidfile=link/run.pid").pidfile == str(root / "d1" / "run.pid")


# --- one config file -------------------------------------------------------------------

def test_missing_config(root):
    assert startup_error("--config=nope.conf") == (
        "`nope.conf' failed to resolve: No such file or directory"
    )


def test_config_values_used(root):
    path = conf(root, "a.conf", f"docroot = {root}/d1\nmgmtlisten = 8001\npidfile = {root}/p.pid\n"
                                "httpgetlisten = 8002\niostat = 0\nserver = none\n")
    opts = load(f"--config={path}")
    assert opts.services == [Service(str(root / "d1"), None, Listen("0.0.0.0", 8001),
                                     Listen("0.0.0.0", 8002))]
    assert (opts.pidfile, opts.iostat, opts.server) == (str(root / "p.pid"), False, "none")


def test_command_line_listeners_win_config_fills(root):
    path = conf(root, "a.conf", "docroot = d1\nhttplisten = 9000\nmgmtlisten = 9001\n")
    service = load(f"--config={path}", "--httplisten=127.0.0.1:8000").services[0]
    assert service.httplisten == Listen("127.0.0.1", 8000)
    assert service.mgmtlisten == Listen("0.0.0.0", 9001)


def test_config_httpgetlisten_alone_disables_defaults(root):
    path = conf(root, "a.conf", "docroot = d1\nhttpgetlisten = 9002\n")
    service = load(f"--config={path}").services[0]
    assert (service.httplisten, service.mgmtlisten) == (None, None)
    assert service.httpgetlisten == Listen("0.0.0.0", 9002)


def test_docroot_must_agree(root):
    path = conf(root, "a.conf", "docroot = link\n")
    assert load(f"--config={path}", f"--docroot={root}/d1").services[0].docroot == str(root / "d1")
    assert startup_error(f"--config={path}", "--docroot=d2") == (
        "conflicting path values for docroot: `d2' != `link'"
    )


def test_pidfile_must_agree(root):
    path = conf(root, "a.conf", "docroot = d1\npidfile = link/x.pid\n")
    assert load(f"--config={path}", "--pidfile=d1/x.pid").pidfile == str(root / "d1" / "x.pid")
    assert startup_error(f"--config={path}", "--pidfile=d1/y.pid") == (
        "conflicting path values for pidfile: `d1/y.pid' != `link/x.pid'"
    )


def test_maxconns_is_summed(root):
    path = conf(root, "a.conf", "docroot = d1\nmaxconns = 300\n")
    assert load(f"--config={path}", "--maxconns=200").maxconns == 500
    assert load(f"--config={path}").maxconns == 300


def test_daemonize_is_ored(root):
    path = conf(root, "a.conf", f"docroot = {root}/d1\ndaemonize = 0\n")
    assert load(f"--config={path}", "-d").daemonize is True
    path = conf(root, "b.conf", f"docroot = {root}/d1\ndaemonize = 1\n")
    assert load(f"--config={path}").daemonize is True  # §8: 1.2.1 ignored this


def test_config_server_overridden_by_command_line(root):
    path = conf(root, "a.conf", "docroot = d1\nserver = none\n")
    assert load(f"--config={path}").server == "none"
    assert load(f"--config={path}", "--server=perlbal").server == "perlbal"


def test_config_warnings_are_prefixed(root, capsys):
    path = conf(root, "a.conf", "docroot = d1\nserverbin = /usr/sbin/nginx\n")
    load(f"--config={path}")
    assert capsys.readouterr().err == f"{ARGV0}: W: serverbin = /usr/sbin/nginx ignored\n"


def test_yaml_config(root):
    path = conf(root, "a.yml", "docroot: d1\nmgmtlisten: 8001\n")
    assert load(f"--config={path}").services[0].mgmtlisten == Listen("0.0.0.0", 8001)


# --- several config files ----------------------------------------------------------------

def test_several_configs_need_multi(root):
    a = conf(root, "a.conf", "docroot = d1\nmgmtlisten = 8001\n")
    b = conf(root, "b.conf", "docroot = d2\nmgmtlisten = 8002\n")
    assert startup_error(f"--config={a}", f"--config={b}") == (
        "--multi must be set if using multiple --config/-c switches"
    )


def test_duplicate_config(root):
    a = conf(root, "a.conf", "docroot = d1\n")
    assert startup_error(f"--config={a}", "--multi", "--config=./a.conf") == (
        "invalid (or duplicate) config=./a.conf"
    )


def test_multi_services(root):
    a = conf(root, "a.conf", "docroot = d1\nmgmtlisten = 8001\nmaxconns = 10\n")
    b = conf(root, "b.conf", "docroot = d2\nhttplisten = 8002\nmaxconns = 20\n")
    opts = load("--multi", f"--config={a}", f"--config={b}", "--maxconns=5")
    assert opts.services == [
        Service(str(root / "d1"), None, Listen("0.0.0.0", 8001), None),
        Service(str(root / "d2"), Listen("0.0.0.0", 8002), None, None),
    ]
    assert opts.maxconns == 35


@pytest.mark.parametrize("name", ["docroot", "httplisten", "mgmtlisten"])
def test_multi_forbids_command_line_service_options(root, name):
    a = conf(root, "a.conf", "docroot = d1\nmgmtlisten = 8001\n")
    b = conf(root, "b.conf", "docroot = d2\nmgmtlisten = 8002\n")
    value = "d1" if name == "docroot" else "9000"
    assert startup_error("--multi", f"--config={a}", f"--config={b}", f"--{name}={value}") == (
        f"--{name} may not be used with multiple --config files"
    )


def test_multi_requires_docroot_and_listener(root):
    a = conf(root, "a.conf", "docroot = d1\nmgmtlisten = 8001\n")
    b = conf(root, "b.conf", "mgmtlisten = 8002\n")
    c = conf(root, "c.conf", "docroot = d2\n")
    assert startup_error("--multi", f"--config={a}", f"--config={b}") == f"no docroot in --config={b}"
    assert startup_error("--multi", f"--config={a}", f"--config={c}") == f"no listeners in --config={c}"


def test_multi_same_docroot(root):
    a = conf(root, "a.conf", "docroot = d1\nmgmtlisten = 8001\n")
    b = conf(root, "b.conf", "docroot = link\nmgmtlisten = 8002\n")
    assert startup_error("--multi", f"--config={a}", f"--config={b}") == (
        "failed to load svc from docroot=link"
    )


# --- --daemonize validation (§1.5) ---------------------------------------------------------

INCOMPATIBLE = "relative paths are incompatible with --daemonize and SIGUSR2 upgrades"


def test_daemonize_with_absolute_paths(root):
    opts = load("-d", f"--docroot={root}/d1", f"--pidfile={root}/p.pid")
    assert opts.daemonize is True and opts.pidfile == str(root / "p.pid")


def test_daemonize_relative_command_line_values(root):
    assert startup_error("--daemonize", "--docroot=d1", "--pidfile=p.pid") == (
        f"pidfile=p.pid must use an absolute path\ndocroot=d1 must use an absolute path\n{INCOMPATIBLE}"
    )


def test_daemonize_relative_config_values_first(root):
    conf(root, "a.conf", "docroot = d1\npidfile = p.pid\ndaemonize\n")
    # the file's own values fail, so the merged ones are not checked (no duplicate lines)
    assert startup_error("--config=a.conf", "--docroot=d1") == (
        "config=a.conf must use an absolute path\npidfile=p.pid must use an absolute path\n"
        f"docroot=d1 must use an absolute path\n{INCOMPATIBLE}"
    )


def test_daemonize_relative_default_is_fine(root, monkeypatch):
    path = conf(root, "a.conf", f"pidfile = {root}/p.pid\ndaemonize = yes\n")
    missing = str(root / "var-mogdata")
    monkeypatch.setattr(cli, "DEFAULT_DOCROOT", missing)
    # validation passes (all absolute), then the default docroot fails to resolve
    assert startup_error(f"--config={path}") == f"`{missing}' failed to resolve: No such file or directory"


def test_daemonize_path_must_be_set(root):
    assert startup_error("-d", "--docroot=d1", environ={}) == (
        "docroot=d1 must use an absolute path\nPATH environment must be set"
    )
    assert startup_error("-d", f"--docroot={root}/d1", environ={}) == "PATH environment must be set"


@pytest.mark.parametrize("path, shown", [
    ("/usr/bin::/bin", ":/bin"), ("/usr/bin:.", "."), (".:/usr/bin", ".:/usr/bin"),
    (":/usr/bin", ":/usr/bin"), ("/usr/bin:", "/usr/bin:"), ("", ""),
])
def test_daemonize_relative_path_entries(root, path, shown):
    assert startup_error("-d", f"--docroot={root}/d1", environ={"PATH": path}) == (
        f"PATH environment contains relative path: {shown}\n{INCOMPATIBLE}"
    )


def test_relative_path_ignored_without_daemonize(root):
    assert load("--docroot=d1", environ={"PATH": "."}).daemonize is False


def test_inherited_fds_skip_daemonizing_but_still_validate(root):
    env = {**ENV, "CMOGSTORED_FD": "3"}
    assert load("-d", f"--docroot={root}/d1", environ=env).daemonize is False
    assert "must use an absolute path" in startup_error("-d", "--docroot=d1", environ=env)


def test_metricslisten_and_stallseconds(root):
    opts = load("--docroot=d1", "--metricslisten=127.0.0.1:9100", "--stallseconds=4")
    assert (opts.metricslisten, opts.stallseconds) == (Listen("127.0.0.1", 9100), 4)
    opts = load("--docroot=d1")
    assert (opts.metricslisten, opts.stallseconds) == (None, 10)  # off by default


def test_metricslisten_from_config_command_line_wins(root):
    (root / "m.conf").write_text("metricslisten = 127.0.0.1:9100\nstallseconds = 7\n")
    opts = load("--config=m.conf", "--docroot=d1")
    assert (opts.metricslisten, opts.stallseconds) == (Listen("127.0.0.1", 9100), 7)
    opts = load("--config=m.conf", "--docroot=d1", "--metricslisten=9200", "--stallseconds=2")
    assert (opts.metricslisten, opts.stallseconds) == (Listen("0.0.0.0", 9200), 2)


def test_metricslisten_never_shares_a_port(root):
    assert "metricslisten=0.0.0.0:7500 is also a listener" in startup_error("--docroot=d1", "--metricslisten=7500")
    assert "is also a listener" in startup_error(
        "--docroot=d1", "--httplisten=127.0.0.1:8000", "--metricslisten=127.0.0.1:8000")
    assert load("--docroot=d1", "--httplisten=127.0.0.1:8000", "--metricslisten=127.0.0.2:8000").metricslisten


def test_stallseconds_must_be_positive(root):
    assert startup_error("--docroot=d1", "--stallseconds=0") == "--stallseconds must be at least 1"
    assert "invalid character" in startup_error("--docroot=d1", "--stallseconds=1s")


def test_durable_and_mountcheck_flags(root):
    service = load("--docroot=d1").services[0]
    assert (service.durable, service.mountcheck) == (False, False)
    service = load("--docroot=d1", "--durable", "--mountc").services[0]
    assert (service.durable, service.mountcheck) == (True, True)
    assert "doesn't allow an argument" in usage_error("--durable=1")
    conf = root / "m.conf"
    conf.write_text("docroot = d1\ndurable = 1\nmountcheck = 0\n")
    service = load(f"--config={conf}").services[0]
    assert (service.durable, service.mountcheck) == (True, False)
    assert load(f"--config={conf}", "--mountcheck").services[0].mountcheck is True


# --- -t / --test-config ------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["-t", "--test-config", "--test"])
def test_test_config_flag(root, flag):
    assert load(flag, "--docroot=d1").test_config is True
    assert load("--docroot=d1").test_config is False


def test_docroot_must_be_a_directory(root):
    (root / "file").write_text("")
    assert startup_error("--docroot=file") == "docroot=file is not a directory"
    cfg = conf(root, "a.conf", f"docroot = {root}/file\nhttplisten = 7500\n")
    assert startup_error(f"--config={cfg}") == f"docroot={root}/file is not a directory"


# --- --trusted -------------------------------------------------------------------------

def test_trusted_off_by_default(root):
    assert load(f"--docroot={root}/d1").services[0].trusted is None


def test_trusted_option(root):
    svc = load(f"--docroot={root}/d1", "--trusted=10.0.0.0/8,::1").services[0]
    assert str(svc.trusted) == "10.0.0.0/8,::1/128"
    assert str(load(f"--docroot={root}/d1", "--trus", "127.0.0.1").services[0].trusted) == "127.0.0.1/32"


@pytest.mark.parametrize("value, message", [
    ("", "failed to parse trusted=: empty entry"),
    ("10.0.0.1,10.0.0.256", "failed to parse trusted=10.0.0.1,10.0.0.256: `10.0.0.256'"),
    ("10.1.2.3/8", "failed to parse trusted=10.1.2.3/8: `10.1.2.3/8': 10.1.2.3/8 has host bits set"),
])
def test_bad_trusted_names_the_entry(root, value, message):
    assert startup_error(f"--docroot={root}/d1", f"--trusted={value}").startswith(message)


def test_command_line_trusted_wins_over_config(root):
    cfg = conf(root, "m.conf", f"docroot = {root}/d1\ntrusted = 10.0.0.0/8\n")
    assert str(load(f"--config={cfg}").services[0].trusted) == "10.0.0.0/8"
    assert str(load(f"--config={cfg}", "--trusted=127.0.0.1").services[0].trusted) == "127.0.0.1/32"


def test_multi_trusted_per_file_and_command_line_for_all(root):
    a = conf(root, "a.conf", f"docroot = {root}/d1\nhttplisten = 7600\ntrusted = 10.0.0.0/8\n")
    b = conf(root, "b.conf", f"docroot = {root}/d2\nhttplisten = 7601\n")
    services = load("--multi", f"--config={a}", f"--config={b}").services
    assert [s.trusted and str(s.trusted) for s in services] == ["10.0.0.0/8", None]
    services = load("--multi", f"--config={a}", f"--config={b}", "--trusted=::1").services
    assert [str(s.trusted) for s in services] == ["::1/128", "::1/128"]
