"""Config file readers: key = value (cmogstored/Perl union) and YAML."""
from __future__ import annotations

import os

import pytest

from mogstored.config.file import Listen, StartupError, parse_listen, read_config


@pytest.fixture
def warnings() -> list[str]:
    return []


def load(tmp_path, text: str | bytes, warnings: list[str], name: str = "m.conf"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return read_config(str(path), warnings.append)


# --- listen addresses ---------------------------------------------------------------

@pytest.mark.parametrize(
    "text, expected",
    [
        ("7500", Listen("0.0.0.0", 7500)),
        (":7500", Listen("0.0.0.0", 7500)),
        ("127.0.0.1:80", Listen("127.0.0.1", 80)),
        ("0.0.0.0:0", Listen("0.0.0.0", 0)),
        ("255.255.255.255:65535", Listen("255.255.255.255", 65535)),
    ],
)
def test_parse_listen_accepts(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", ":", "localhost:80", "1.2.3:80", "666.0.0.1:80", "1.2.3.4:", "1.2.3.4:65536",
     "[::1]:80", "::1:80", "1.2.3.4:8x", " 80", "१२३"],
)
def test_parse_listen_rejects(text):
    with pytest.raises(ValueError):
        parse_listen(text)


def test_listen_str():
    assert str(Listen("0.0.0.0", 7500)) == "0.0.0.0:7500"


# --- key = value --------------------------------------------------------------------

def test_perl_shipped_example(tmp_path, warnings):
    cfg = load(tmp_path, "maxconns = 10000\nhttplisten = 0.0.0.0:7500\n"
                         "mgmtlisten = 0.0.0.0:7501\ndocroot = /var/mogdata\n", warnings)
    assert cfg.maxconns == 10000
    assert cfg.httplisten == Listen("0.0.0.0", 7500)
    assert cfg.mgmtlisten == Listen("0.0.0.0", 7501)
    assert cfg.docroot == "/var/mogdata"
    assert warnings == []


def test_defaults_when_silent(tmp_path, warnings):
    cfg = load(tmp_path, "", warnings)
    assert (cfg.docroot, cfg.pidfile, cfg.maxconns, cfg.server) == (None, None, 0, None)
    assert cfg.daemonize is False and cfg.iostat is True and not cfg.has_listener


@pytest.mark.parametrize(
    "line, expected",
    [("daemonize", True), ("daemonize = 1", True), ("daemonize = yes", True),
     ("daemonize = 0", False), ("daemonize =", False), ("  daemonize\t", True)],
)
def test_daemonize_union(tmp_path, warnings, line, expected):
    assert load(tmp_path, line + "\n", warnings).daemonize is expected


def test_iostat_boolean(tmp_path, warnings):
    assert load(tmp_path, "iostat = 0\n", warnings).iostat is False
    assert load(tmp_path, "iostat = 1\n", warnings).iostat is True


def test_perl_only_keys_are_accepted(tmp_path, warnings):
    cfg = load(tmp_path, "config = /etc/x.conf\ns = 1\nserverbin = /usr/sbin/lighttpd\n", warnings)
    assert warnings == ["W: serverbin = /usr/sbin/lighttpd ignored"]
    assert cfg.docroot is None


def test_httpgetlisten(tmp_path, warnings):
    assert load(tmp_path, "httpgetlisten = 7502\n", warnings).httpgetlisten == Listen("0.0.0.0", 7502)


def test_unknown_keys_and_malformed_lines_warn(tmp_path, warnings):
    path = tmp_path / "m.conf"
    cfg = load(tmp_path, "foo = bar\nSERVER max_connect = 3\ndocroot = /x\n", warnings)
    assert cfg.docroot == "/x"
    assert warnings == [
        f"W: unknown key `foo' in config={path} ignored",
        f"W: config={path} line 2 not understood, ignored",
    ]


def test_comments_and_whitespace(tmp_path, warnings):
    cfg = load(
        tmp_path,
        "# header\n\n\tdocroot=/x  # comment\nhttplisten = 7500#c\nmaxconns = 5# five\npidfile = /p#q",
        warnings,
    )
    assert cfg.docroot == "/x"
    assert cfg.httplisten == Listen("0.0.0.0", 7500)
    assert cfg.maxconns == 5
    assert cfg.pidfile == "/p#q"  # cmogstored: a path runs up to whitespace; no final newline needed
    assert warnings == []


def test_later_key_overrides(tmp_path, warnings):
    assert load(tmp_path, "docroot = /a\ndocroot = /b\n", warnings).docroot == "/b"


def test_crlf_line_endings(tmp_path, warnings):
    assert load(tmp_path, "docroot = /a\r\nmaxconns = 3\r\n", warnings).maxconns == 3


def test_empty_value_is_ignored_with_warning(tmp_path, warnings):
    assert load(tmp_path, "docroot =\n", warnings).docroot is None
    assert warnings == [f"W: `docroot' without a value in config={tmp_path / 'm.conf'} ignored"]


def test_server_perlbal_warns(tmp_path, warnings):
    assert load(tmp_path, "server = perlbal\n", warnings).server == "perlbal"
    assert warnings == ["W: using internal HTTP for 'server = perlbal' instead"]


def test_server_none(tmp_path, warnings):
    assert load(tmp_path, "server = none\n", warnings).server == "none"
    assert warnings == []


def test_server_other_is_fatal(tmp_path, warnings):
    with pytest.raises(StartupError) as e:
        load(tmp_path, "server = lighttpd\n", warnings)
    assert str(e.value) == "E: 'server = lighttpd' not understood by cmogstored"


def test_bad_listen_is_parser_error(tmp_path, warnings):
    path = tmp_path / "m.conf"
    with pytest.raises(StartupError) as e:
        load(tmp_path, "mgmtlisten = localhost:7501\n", warnings)
    assert str(e.value) == (
        f"failed to parse mgmtlisten=localhost:7501\nfailed to load config={path}: parser error"
    )


def test_bad_maxconns_is_parser_error(tmp_path, warnings):
    with pytest.raises(StartupError) as e:
        load(tmp_path, "maxconns = 12x\n", warnings)
    assert str(e.value).endswith("parser error")


def test_nul_byte_is_parser_error(tmp_path, warnings):
    path = tmp_path / "m.conf"
    with pytest.raises(StartupError) as e:
        load(tmp_path, b"docroot = /a\0b\n", warnings)
    assert str(e.value) == f"NUL character in `docroot' value\nfailed to load config={path}: parser error"


def test_unreadable_file(tmp_path, warnings):
    with pytest.raises(StartupError) as e:
        read_config(str(tmp_path), warnings.append)  # a directory
    assert str(e.value) == f"failed to load config={tmp_path}: Is a directory"


def test_non_utf8_path_survives(tmp_path, warnings):
    cfg = load(tmp_path, b"docroot = /d\xff\n", warnings)
    assert cfg.docroot is not None and cfg.docroot.encode("utf-8", "surrogateescape") == b"/d\xff"


# --- YAML ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["m.yaml", "m.yml"])
def test_yaml_same_keys(tmp_path, warnings, name):
    cfg = load(
        tmp_path,
        "docroot: /srv/mog\nhttplisten: 7500\nmgmtlisten: '127.0.0.1:7501'\n"
        "httpgetlisten: :7502\nmaxconns: 20\npidfile: /run/m.pid\ndaemonize: true\n"
        "iostat: false\nserver: none\nfoo: 1\n",
        warnings,
        name,
    )
    assert cfg.docroot == "/srv/mog"
    assert cfg.httplisten == Listen("0.0.0.0", 7500)
    assert cfg.mgmtlisten == Listen("127.0.0.1", 7501)
    assert cfg.httpgetlisten == Listen("0.0.0.0", 7502)
    assert (cfg.maxconns, cfg.pidfile, cfg.server) == (20, "/run/m.pid", "none")
    assert cfg.daemonize is True and cfg.iostat is False
    assert warnings == [f"W: unknown key `foo' in config={tmp_path / name} ignored"]


def test_yaml_numeric_booleans(tmp_path, warnings):
    cfg = load(tmp_path, "daemonize: 1\niostat: 0\n", warnings, "m.yaml")
    assert cfg.daemonize is True and cfg.iostat is False


def test_yaml_empty_file(tmp_path, warnings):
    assert load(tmp_path, "", warnings, "m.yaml").docroot is None


@pytest.mark.parametrize("text", ["docroot: [unclosed\n", "- a\n- b\n", "just a string\n",
                                  "docroot: [/a, /b]\n", "docroot: {a: 1}\n"])
def test_yaml_errors(tmp_path, warnings, text):
    with pytest.raises(StartupError) as e:
        load(tmp_path, text, warnings, "m.yaml")
    assert str(e.value) == f"failed to load config={tmp_path / 'm.yaml'}: parser error"


def test_yaml_not_chosen_for_other_names(tmp_path, warnings):
    # "docroot: /x" is no key = value statement: ignored with a warning, not YAML
    cfg = load(tmp_path, "docroot: /x\n", warnings, "m.conf")
    assert cfg.docroot is None and len(warnings) == 1


# --- metrics ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, text", [
    ("m.conf", "metricslisten = 127.0.0.1:9100\nstallseconds = 3\n"),
    ("m.yaml", "metricslisten: 127.0.0.1:9100\nstallseconds: 3\n"),
])
def test_metrics_keys(tmp_path, warnings, name, text):
    cfg = load(tmp_path, text, warnings, name)
    assert (cfg.metricslisten, cfg.stallseconds, warnings) == (Listen("127.0.0.1", 9100), 3, [])
    assert not cfg.has_listener  # a metrics port alone serves no docroot


@pytest.mark.parametrize("line", ["stallseconds = 0", "stallseconds = x", "metricslisten = nope"])
def test_bad_metrics_keys_are_parser_errors(tmp_path, warnings, line):
    with pytest.raises(StartupError, match="parser error"):
        load(tmp_path, line + "\n", warnings)


@pytest.mark.parametrize("name, text", [
    ("m.conf", "worker_processes = auto\n"), ("m.yaml", "worker_processes: auto\n"),
])
def test_worker_processes_auto_key(tmp_path, warnings, name, text):
    cfg = load(tmp_path, text, warnings, name)
    assert (cfg.worker_processes, warnings) == (len(os.sched_getaffinity(0)), [])


@pytest.mark.parametrize("value", ["x", "-1", "4294967296", "2 workers"])
def test_bad_worker_processes_is_a_parser_error(tmp_path, warnings, value):
    with pytest.raises(StartupError, match=f"failed to parse worker_processes={value}"):
        load(tmp_path, f"worker_processes = {value}\n", warnings)


def test_durable_and_mountcheck_keys(tmp_path, warnings):
    cfg = load(tmp_path, "", warnings)
    assert (cfg.durable, cfg.mountcheck) == (False, False)
    cfg = load(tmp_path, "durable = 1\nmountcheck\n", warnings)
    assert (cfg.durable, cfg.mountcheck) == (True, True)
    cfg = load(tmp_path, "durable: true\nmountcheck: 0\n", warnings, "m.yaml")
    assert (cfg.durable, cfg.mountcheck) == (True, False)
    assert warnings == []


# --- trusted ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, text", [
    ("m.conf", "trusted = 10.0.0.0/8, ::1  # trackers\n"),
    ("m.yaml", "trusted: 10.0.0.0/8,::1\n"),
    ("m.yaml", "trusted: [10.0.0.0/8, '::1']\n"),
    ("m.yml", "trusted:\n  - 10.0.0.0/8\n  - ::1\n"),
])
def test_trusted_key(tmp_path, warnings, name, text):
    cfg = load(tmp_path, text, warnings, name)
    assert str(cfg.trusted) == "10.0.0.0/8,::1/128" and warnings == []


def test_trusted_absent_is_off(tmp_path, warnings):
    assert load(tmp_path, "docroot = /x\n", warnings).trusted is None


@pytest.mark.parametrize("name, text, detail", [
    ("m.conf", "trusted = 10.0.0.1, nope\n", "failed to parse trusted=10.0.0.1, nope: `nope'"),
    ("m.conf", "trusted = 10.1.2.3/8\n", "failed to parse trusted=10.1.2.3/8: `10.1.2.3/8': 10.1.2.3/8 has host bits set"),
    ("m.conf", "trusted =\n", "failed to parse trusted=: empty entry"),
    ("m.conf", "trusted\n", "failed to parse trusted=: empty entry"),
    ("m.yaml", "trusted: [10.0.0.1, 12]\n", "failed to parse trusted=['10.0.0.1', 12]: entries must be strings"),
    ("m.yaml", "trusted: [10.0.0.1, '']\n", "failed to parse trusted=10.0.0.1,: empty entry"),
    ("m.yaml", "trusted:\n", "failed to parse trusted=: empty entry"),
])
def test_bad_trusted_is_a_parser_error_naming_the_entry(tmp_path, warnings, name, text, detail):
    """Never ignored with a warning: a trust list silently dropped would trust everyone."""
    with pytest.raises(StartupError) as e:
        load(tmp_path, text, warnings, name)
    first, second = str(e.value).split("\n")
    assert first.startswith(detail) and second == f"failed to load config={tmp_path / name}: parser error"


def test_yaml_empty_trusted_list_is_a_parser_error(tmp_path, warnings):
    with pytest.raises(StartupError, match="parser error"):
        load(tmp_path, "trusted: []\n", warnings, "m.yaml")
