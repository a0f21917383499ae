"""What systemd (252, bookworm) makes of an EnvironmentFile and of
ExecStart=/usr/bin/etcd-mirror $ETCD_MIRROR_OPTS $SRC $DST.

parse_env_file() follows parse_env_file_internal() in src/basic/env-file.c;
split() follows replace_env_argv() in src/basic/env-util.c, which splits a
lone $VAR with extract_first_word(WHITESPACE, EXTRACT_RELAX|EXTRACT_UNQUOTE):
quotes group and are removed, a backslash (inside quotes too) keeps the next
character.

Run by 85-template.sh (scripts/check-package), as

  systemdenv.py samples INSTANCE.PP OUTDIR   one NAME.json of parameters per sample
                                             (the define's defaults read from
                                             INSTANCE.PP) and OUTDIR/site.pp; prints
                                             the instance names
  systemdenv.py catalog CATALOG.JSON OUTDIR  the /etc/etcd-mirror/*.conf files of a
                                             compiled Puppet catalog, into OUTDIR
  systemdenv.py check NAME.json FILE         exit 1 (and say why) unless FILE gives
                                             etcd-mirror the arguments and
                                             environment the parameters ask for
  systemdenv.py argv FILE                    JSON [arguments, ETCDMIRROR_* variables]
  systemdenv.py run FILE COMMAND...          exec COMMAND as ExecStart= would run it
"""
import json
import re
import sys

WHITESPACE = " \t\n\r"
NEWLINE = "\n\r"
SHELL_NEED_ESCAPE = '"\\`$'


def parse_env_file(text):
    env, key, value = {}, [], None
    state = "PRE_KEY"
    last_key_ws = last_value_ws = None

    def push():
        k = "".join(key[:last_key_ws] if last_key_ws is not None else key)
        env[k] = "".join(value or [])

    for c in text:
        if state == "PRE_KEY":
            if c in "#;":
                state = "COMMENT"
            elif c not in WHITESPACE:
                state, key, last_key_ws = "KEY", [c], None
        elif state == "KEY":
            if c in NEWLINE:
                state, key = "PRE_KEY", []
            elif c == "=":
                state, value, last_value_ws = "PRE_VALUE", None, None
            else:
                if c not in WHITESPACE:
                    last_key_ws = None
                elif last_key_ws is None:
                    last_key_ws = len(key)
                key.append(c)
        elif state == "PRE_VALUE":
            if c in NEWLINE:
                push()
                state, key, value = "PRE_KEY", [], None
            elif c == "'":
                state = "SINGLE"
            elif c == '"':
                state = "DOUBLE"
            elif c == "\\":
                state = "VALUE_ESCAPE"
            elif c not in WHITESPACE:
                state, value = "VALUE", (value or []) + [c]
        elif state == "VALUE":
            if c in NEWLINE:
                if last_value_ws is not None:
                    value = value[:last_value_ws]
                push()
                state, key, value = "PRE_KEY", [], None
            elif c == "\\":
                state, last_value_ws = "VALUE_ESCAPE", None
            else:
                if c not in WHITESPACE:
                    last_value_ws = None
                elif last_value_ws is None:
                    last_value_ws = len(value)
                value.append(c)
        elif state == "VALUE_ESCAPE":
            state = "VALUE"
            value = value if value is not None else []
            if c not in NEWLINE:
                value.append(c)
        elif state == "SINGLE":
            if c == "'":
                state = "PRE_VALUE"
            else:
                value = (value or []) + [c]
        elif state == "DOUBLE":
            if c == '"':
                state = "PRE_VALUE"
            elif c == "\\":
                state = "DOUBLE_ESCAPE"
            else:
                value = (value or []) + [c]
        elif state == "DOUBLE_ESCAPE":
            state = "DOUBLE"
            value = value if value is not None else []
            if c in SHELL_NEED_ESCAPE:
                value.append(c)
            elif c != "\n":
                value += ["\\", c]
        elif state == "COMMENT":
            if c == "\\":
                state = "COMMENT_ESCAPE"
            elif c in NEWLINE:
                state = "PRE_KEY"
        elif state == "COMMENT_ESCAPE":
            state = "COMMENT"  # systemd < 254: an escaped newline continues the comment
    if state in ("PRE_VALUE", "VALUE", "VALUE_ESCAPE", "SINGLE", "DOUBLE", "DOUBLE_ESCAPE"):
        if state == "VALUE" and last_value_ws is not None:
            value = value[:last_value_ws]
        push()
    return env


def split(value):
    words, i, n = [], 0, len(value)
    while True:
        while i < n and value[i] in WHITESPACE:
            i += 1
        if i >= n:
            return words
        word, quote = [], None
        while i < n:
            c = value[i]
            if c == "\\":
                if i + 1 < n:
                    word.append(value[i + 1])
                i += 2
            elif quote:
                if c == quote:
                    quote = None
                else:
                    word.append(c)
                i += 1
            elif c in "'\"":
                quote = c
                i += 1
            elif c in WHITESPACE:
                break
            else:
                word.append(c)
                i += 1
        words.append("".join(word))


def argv(env):
    """The arguments after /usr/bin/etcd-mirror."""
    return [w for var in ("ETCD_MIRROR_OPTS", "SRC", "DST") if var in env
            for w in split(env[var])]


NASTY_REGEX = " /x/(it's|\"q\"|a  b|\\$HOME|c\\.d|%i|`id`|\\\\)$ "
SAMPLES = {
    # Titles as Wikimedia writes them ("PATH@CLUSTER") become the instance
    # name "_PATH_CLUSTER"; strip defaults to true (always --strip there).
    "checkpkg_defaults": {
        "src": "http://127.0.0.1:2379", "dst": "http://127.0.0.1:4001"},
    "/checkpkg@eqiad.wmnet": {
        "src": "https://conf1007.eqiad.wmnet:2379", "src_path": "/conftool",
        "dst": "http://127.0.0.1:2378", "dst_path": "/conftool", "enable": True,
        "src_ignore_keys_regex": "^/conftool/v1/(mediawiki-config|request-ipblocks)/",
        "port": 8001},
    "checkpkg_spaces": {
        "src": "http://127.0.0.1:2379,http://127.0.0.2:2379", "src_path": "/conftool",
        "dst": "https://etcd.replica.example:2379", "dst_path": "/conftool", "strip": True,
        "ignore_keys_regex": "/conftool/(local|scratch area)/.*", "port": 0,
        "heartbeat_key": "/conftool/heartbeat", "max_replica_age": 120,
        "verify_interval": 0.5, "watch_concurrency": 64, "ha": True, "ha_ttl": 6},
    "checkpkg_nasty": {
        "src": "http://mirror:pa$$w0rd@127.0.0.1:2379", "src_path": "/a b",
        "dst": "http://127.0.0.1:4001", "dst_path": "/replica/$x",
        "src_ignore_keys_regex": NASTY_REGEX, "ignore_keys_regex": NASTY_REGEX,
        "enable": False, "auto_resync": False, "strip": False, "port": 8002,
        "on_divergence": "resync", "reload": True, "max_replica_age": 2.5,
        "watch_stream": False, "write_pipeline": 1, "dst_api": "v3",
        "dst_credentials": "user:p@ss w'rd\"$x\\y"},
}


def defaults(manifest):
    """The define's defaults, read from instance.pp (so they cannot drift)."""
    found = {}
    for name, literal in re.findall(r"^\s+[A-Z][\w\[\], ']*\s+\$(\w+)\s*=\s*(.+?),?\s*$",
                                    open(manifest).read(), re.M):
        if literal == "undef":
            found[name] = None
        elif literal in ("true", "false"):
            found[name] = literal == "true"
        elif literal.startswith("'"):
            found[name] = literal[1:-1]
        else:
            found[name] = float(literal) if "." in literal else int(literal)
    return found


def instance_name(title):
    """regsubst($title, '\\W', '_', 'G'), as the define (and Wikimedia's) does."""
    return re.sub(r"\W", "_", title, flags=re.ASCII)


def keys_regex(p):
    """src_ignore_keys_regex, or its alias ignore_keys_regex."""
    return p["src_ignore_keys_regex"] if p["src_ignore_keys_regex"] is not None else p["ignore_keys_regex"]


def number(value):
    return str(int(value)) if float(value).is_integer() else str(value)


def expected(p):
    """What etcd-mirror must receive for parameters p (defaults filled in)."""
    args = ["--src-prefix", p["src_path"], "--dst-prefix", p["dst_path"]]
    args += ["--strip"] if p["strip"] else []
    args += ["--src-ignore-keys-regex", keys_regex(p)] if keys_regex(p) is not None else []
    args += ["--port", str(p["port"])]
    args += ["--heartbeat-key", p["heartbeat_key"]] if p["heartbeat_key"] is not None else []
    args += ["--max-replica-age", number(p["max_replica_age"])] if p["max_replica_age"] > 0 else []
    args += [] if p["auto_resync"] else ["--no-auto-resync"]
    args += ["--on-divergence", p["on_divergence"]]
    args += ["--verify-interval", number(p["verify_interval"])] if p["verify_interval"] > 0 else []
    args += ["--watch-concurrency", str(p["watch_concurrency"])]
    args += [] if p["watch_stream"] else ["--no-watch-stream"]
    args += ["--write-pipeline", str(p["write_pipeline"])] if p["write_pipeline"] != 32 else []
    args += ["--src-api", p["src_api"]] if p["src_api"] != "v2" else []
    args += ["--dst-api", p["dst_api"]] if p["dst_api"] != "v2" else []
    args += ["--reload"] if p["reload"] else []
    args += ["--ha"] if p["ha"] else []
    args += ["--ha-ttl", str(p["ha_ttl"])] if p["ha_ttl"] is not None else []
    env = {}
    for side in ("src", "dst"):
        if p[side + "_credentials"] is not None:
            env["ETCDMIRROR_%s_CREDENTIALS" % side.upper()] = p[side + "_credentials"]
    return args + [p["src"], p["dst"]], env


def puppet_string(value):
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def puppet_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return puppet_string(value)
    return repr(value)


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "samples":  # manifest, outdir: params JSON per sample + a site.pp
        manifest, outdir = args
        base = defaults(manifest)
        site = []
        for title, overrides in SAMPLES.items():
            params = dict(base, **overrides, title=title)
            # The define's own variables, which the template uses too.
            params.update(instance_name=instance_name(title), keys_regex=keys_regex(params))
            with open("%s/%s.json" % (outdir, instance_name(title)), "w") as f:
                json.dump(params, f)
            site.append("etcdmirror::instance { %s:\n%s\n}" % (puppet_string(title), "\n".join(
                "  %s => %s," % (k, puppet_value(v)) for k, v in overrides.items())))
        with open(outdir + "/site.pp", "w") as f:
            f.write("\n".join(site) + "\n")
        print(" ".join(instance_name(title) for title in SAMPLES))
    elif command == "catalog":  # catalog.json, outdir: the rendered files in it
        catalog, outdir = args
        for resource in json.load(open(catalog))["resources"]:
            match = re.match(r"/etc/etcd-mirror/(.+)\.conf$", resource["title"])
            if resource["type"] == "File" and match:
                with open("%s/%s.conf" % (outdir, match.group(1)), "w") as f:
                    f.write(resource["parameters"]["content"])
    elif command == "check":  # params.json, rendered file: compare with what is expected
        params, rendered = json.load(open(args[0])), open(args[1]).read()
        env = parse_env_file(rendered)
        want_argv, want_env = expected(params)
        got_env = {k: v for k, v in env.items() if k.startswith("ETCDMIRROR_")}
        if argv(env) != want_argv or got_env != want_env:
            print("systemd would pass %r with %r,\n  expected %r with %r"
                  % (argv(env), got_env, want_argv, want_env), file=sys.stderr)
            sys.exit(1)
    elif command == "argv":  # file: JSON [argv, extra environment]
        env = parse_env_file(open(args[0]).read())
        print(json.dumps([argv(env), {k: v for k, v in env.items() if k.startswith("ETCDMIRROR_")}]))
    elif command == "run":  # file, command...: run it as ExecStart would
        import os
        env = parse_env_file(open(args[0]).read())
        extra = {k: v for k, v in env.items() if k.startswith("ETCDMIRROR_")}
        os.execve(args[1], args[1:] + argv(env), dict(os.environ, **extra))
    else:
        sys.exit("unknown command " + command)


if __name__ == "__main__":
    main()
