# shellcheck shell=bash
# scripts/check-package, part 85: the Puppet template, read the way systemd
# reads it.
#
# The config file etcdmirror::instance writes is the unit's EnvironmentFile,
# and ExecStart= splits its variables into etcd-mirror's arguments: a quoting
# mistake in the template gives the daemon other arguments than the
# parameters say, with no error anywhere.  So, for sample parameter sets
# (systemdenv.py's SAMPLES: defaults, Wikimedia-style, spaces, nasty quoting):
#   g1  the template rendered by plain Ruby ERB (render.rb);
#   g2  the same samples compiled by real Puppet (puppet apply --noop, with
#       nothing applied): one "puppet catalog" line, and Puppet's files must
#       be byte-identical to ERB's;
#   then, per sample, the file read with a model of systemd 252's parser
#   (systemdenv.py) must give the expected argv and ETCDMIRROR_* variables,
#   and the installed etcd-mirror --check-config must accept them; where
#   systemd runs, systemd-run with the file as EnvironmentFile must agree;
#   g3  a Wikimedia-shaped profile plus a second instance compiles and gives
#       the right arguments; two instances on one port, or the two names of
#       the ignore regex disagreeing, must fail the catalog;
# and last, the installed example config must pass --check-config.
#
# Sourced by the driver, scripts/check-package (not run alone), in ROOT with
# set -euo pipefail, after part 50 installed the packages.  Uses from it:
# ROOT, WORK, PARTS, PY3, SUDO, pass, fail, show.  Defines compile(), used
# only here.

mkdir -p "$WORK/erb" "$WORK/puppet/modules" "$WORK/puppet/conf" "$WORK/puppet/code" "$WORK/puppet/var"
ln -s "$ROOT/puppet-templates" "$WORK/puppet/modules/etcdmirror"

# systemdenv.py: systemd's EnvironmentFile parser and its split of "$VAR" in
# ExecStart=, plus the sample parameter sets and what etcd-mirror must
# receive for them.  One $WORK/erb/NAME.json per sample, and a site.pp.
samples=$($PY3 "$PARTS/systemdenv.py" samples puppet-templates/manifests/instance.pp "$WORK/erb")

# g1: the template rendered by plain Ruby ERB, the way Puppet does
# (trim_mode '-', parameters as instance variables, undef as nil): render.rb.
# g2: the same samples through real Puppet: compile a catalog (nothing is
# applied: --tags matches no resource) and take the files' content from it.
# compile SITE.pp NAME: the catalog in $WORK/puppet/NAME/catalog.json (none
# if it does not compile), Puppet's output in $WORK/puppet/NAME/apply.log.
compile() {
    local dir="$WORK/puppet/$2"
    mkdir -p "$dir"
    (cd "$WORK" && timeout 300 puppet apply --noop --color=false --tags=checkpkg_apply_nothing \
        --confdir "$WORK/puppet/conf" --vardir "$dir/var" --codedir "$WORK/puppet/code" \
        --logdir "$dir/var/log" --rundir "$dir/var/run" --publicdir "$dir/public" \
        --modulepath "$WORK/puppet/modules" --strict=error --strict_variables \
        --catalog_cache_terminus=json "$1") >"$dir/apply.log" 2>&1 || true
    local catalog
    catalog=$(find "$dir/var/client_data/catalog" -name '*.json' 2>/dev/null | head -1 || true)
    if [ -n "$catalog" ]; then
        mv "$catalog" "$dir/catalog.json"
    fi
}
compile "$WORK/erb/site.pp" samples
cp "$WORK/puppet/samples/apply.log" "$WORK/puppet-apply.log"
catalog=$(find "$WORK/puppet/samples" -name catalog.json)
if [ -n "$catalog" ] && mkdir -p "$WORK/puppet/out" \
    && $PY3 "$PARTS/systemdenv.py" catalog "$catalog" "$WORK/puppet/out" 2>>"$WORK/puppet-apply.log"; then
    pass "puppet catalog: etcdmirror::instance compiles for ${samples// /, }"
else
    fail "puppet catalog: puppet apply --noop could not compile the samples"
    grep -v 'Facter' "$WORK/puppet-apply.log" | tail -n 20 | sed 's/^/    | /'
fi

# Where systemd really runs, it is asked too: a transient unit with the file
# as its EnvironmentFile prints the arguments it gets.
SYSTEMD_RUN=0
if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null \
    && "${SUDO[@]}" systemd-run --quiet --wait --pipe --collect /bin/true >/dev/null 2>&1; then
    SYSTEMD_RUN=1
else
    echo "note: no usable systemd here (systemd-run); the EnvironmentFile is read with a model of systemd 252's parser only"
fi

for sample in $samples; do
    problems=()
    if ! ruby "$PARTS/render.rb" puppet-templates/templates/instance.conf.erb "$WORK/erb/$sample.json" \
        >"$WORK/erb/$sample.conf" 2>"$WORK/erb/$sample.err"; then
        problems+=("ruby erb: $(head -3 "$WORK/erb/$sample.err")")
    elif [ -f "$WORK/puppet/out/$sample.conf" ] \
        && ! cmp -s "$WORK/erb/$sample.conf" "$WORK/puppet/out/$sample.conf"; then
        problems+=("ruby erb and puppet render differently: $(diff "$WORK/erb/$sample.conf" "$WORK/puppet/out/$sample.conf" | head -5)")
    elif ! $PY3 "$PARTS/systemdenv.py" check "$WORK/erb/$sample.json" "$WORK/erb/$sample.conf" \
        2>"$WORK/erb/$sample.err"; then
        problems+=("$(cat "$WORK/erb/$sample.err")")
    elif ! (cd "$WORK" && $PY3 "$PARTS/systemdenv.py" run "$WORK/erb/$sample.conf" \
        /usr/bin/etcd-mirror --check-config) >"$WORK/erb/$sample.out" 2>&1; then
        problems+=("etcd-mirror --check-config: $(tail -3 "$WORK/erb/$sample.out")")
    fi
    if [ ${#problems[@]} -eq 0 ] && [ "$SYSTEMD_RUN" = 1 ]; then
        # shellcheck disable=SC2016 # $VAR is for systemd to expand, not bash
        if (cd "$WORK" && "${SUDO[@]}" systemd-run --quiet --wait --pipe --collect \
            -p EnvironmentFile="$WORK/erb/$sample.conf" "$PY3" -c \
            'import json, os, sys; print(json.dumps([sys.argv[1:], {k: v for k, v in os.environ.items() if k.startswith("ETCDMIRROR_")}]))' \
            '$ETCD_MIRROR_OPTS' '$SRC' '$DST') >"$WORK/erb/$sample.systemd" 2>&1; then
            if ! $PY3 -c 'import json, sys; a, b = (json.loads(open(f).read()) for f in sys.argv[1:]); sys.exit(a != b)' \
                "$WORK/erb/$sample.systemd" <($PY3 "$PARTS/systemdenv.py" argv "$WORK/erb/$sample.conf"); then
                problems+=("systemd itself passes $(cat "$WORK/erb/$sample.systemd")")
            fi
        else
            problems+=("systemd-run: $(tail -3 "$WORK/erb/$sample.systemd")")
        fi
    fi
    if [ ${#problems[@]} -eq 0 ]; then
        agrees=""
        [ "$SYSTEMD_RUN" = 1 ] && agrees=" (systemd-run agrees)"
        pass "template $sample: rendered, read as systemd reads it$agrees, etcd-mirror --check-config accepts it"
    else
        fail "template $sample: $(IFS=';'; echo "${problems[*]}")"
    fi
done

# g3: a profile shaped like Wikimedia's profile::etcd::replication
# (puppet-templates/tests/wikimedia_profile.pp: their title and parameter
# names, no port) plus a second instance on port 8001 compiles; the same
# second instance without a port (both on 8000) must not; nor may the two
# names of the ignore regex disagree.
mkdir -p "$WORK/puppet/modules/profile/manifests/etcd" "$WORK/puppet/wmf-confs"
cp puppet-templates/tests/wikimedia_profile.pp "$WORK/puppet/modules/profile/manifests/etcd/replication.pp"
second="etcdmirror::instance { '/spicerack@codfw.wmnet':
  src      => 'https://conf2004.codfw.wmnet:2379',
  src_path => '/spicerack',
  dst      => 'http://127.0.0.1:2378',
  dst_path => '/spicerack',"
printf 'include profile::etcd::replication\n%s\n  port     => 8001,\n}\n' "$second" >"$WORK/puppet/wmf-ok.pp"
printf 'include profile::etcd::replication\n%s\n}\n' "$second" >"$WORK/puppet/wmf-clash.pp"
cat >"$WORK/puppet/alias-clash.pp" <<'PP'
etcdmirror::instance { 'checkpkg_alias':
  src                   => 'http://127.0.0.1:2379',
  dst                   => 'http://127.0.0.1:4001',
  src_ignore_keys_regex => '^/conftool/A',
  ignore_keys_regex     => '^/conftool/a',
}
PP
compile "$WORK/puppet/wmf-ok.pp" wmf-ok
compile "$WORK/puppet/wmf-clash.pp" wmf-clash
compile "$WORK/puppet/alias-clash.pp" alias-clash
problems=()
if [ -f "$WORK/puppet/wmf-ok/catalog.json" ] \
    && $PY3 "$PARTS/systemdenv.py" catalog "$WORK/puppet/wmf-ok/catalog.json" "$WORK/puppet/wmf-confs"; then
    for name in _conftool_eqiad_wmnet:8000 _spicerack_codfw_wmnet:8001; do
        port=${name#*:} name=${name%:*}
        conf="$WORK/puppet/wmf-confs/$name.conf"
        grep -q "\"title\": *\"etcd-mirror@$name\"" "$WORK/puppet/wmf-ok/catalog.json" \
            || problems+=("no Service[etcd-mirror@$name] in the catalog")
        if [ ! -f "$conf" ]; then
            problems+=("no File[/etc/etcd-mirror/$name.conf] in the catalog")
            continue
        fi
        args=$($PY3 "$PARTS/systemdenv.py" argv "$conf")
        for want in '"--strip"' "\"--port\", \"$port\""; do
            grep -qF -- "$want" <<<"$args" || problems+=("$name: etcd-mirror would not get $want: $args")
        done
        if ! (cd "$WORK" && $PY3 "$PARTS/systemdenv.py" run "$conf" /usr/bin/etcd-mirror --check-config) \
            >"$WORK/puppet/wmf-confs/$name.out" 2>&1; then
            problems+=("$name: etcd-mirror --check-config: $(tail -1 "$WORK/puppet/wmf-confs/$name.out")")
        fi
    done
    grep -qF '"--src-ignore-keys-regex", "^/conftool/v1/(mediawiki-config|request-ipblocks)/"' \
        <<<"$($PY3 "$PARTS/systemdenv.py" argv "$WORK/puppet/wmf-confs/_conftool_eqiad_wmnet.conf" 2>/dev/null)" \
        || problems+=("_conftool_eqiad_wmnet: src_ignore_keys_regex did not reach --src-ignore-keys-regex")
else
    problems+=("does not compile: $(grep -E '^Error' "$WORK/puppet/wmf-ok/apply.log" | head -3)")
fi
if [ ${#problems[@]} -eq 0 ]; then
    pass "puppet profile: Wikimedia-shaped profile::etcd::replication ('/conftool@eqiad.wmnet', src_ignore_keys_regex, no port) and a second instance on port 8001 compile; etcd-mirror@_conftool_eqiad_wmnet gets --strip, the regex and --port 8000; --check-config accepts both"
else
    fail "puppet profile: $(IFS=';'; echo "${problems[*]}")"
    grep -v Facter "$WORK/puppet/wmf-ok/apply.log" | tail -n 10 | sed 's/^/    | /'
fi
clash_message="port 8000 is already used by etcdmirror::instance[/conftool@eqiad.wmnet]"
if [ ! -f "$WORK/puppet/wmf-clash/catalog.json" ] && grep -qF "$clash_message" "$WORK/puppet/wmf-clash/apply.log"; then
    pass "puppet duplicate port: two instances on port 8000 fail the catalog (\"$clash_message\")"
else
    fail "puppet duplicate port: two instances on port 8000 $([ -f "$WORK/puppet/wmf-clash/catalog.json" ] && echo compiled || echo failed without naming the port)"
    grep -v Facter "$WORK/puppet/wmf-clash/apply.log" | tail -n 10 | sed 's/^/    | /'
fi
if [ ! -f "$WORK/puppet/alias-clash/catalog.json" ] \
    && grep -qF "src_ignore_keys_regex and ignore_keys_regex differ" "$WORK/puppet/alias-clash/apply.log"; then
    pass "puppet regex alias: src_ignore_keys_regex and ignore_keys_regex that differ (in case only) fail the catalog"
else
    fail "puppet regex alias: differing src_ignore_keys_regex and ignore_keys_regex were accepted or failed otherwise"
    grep -v Facter "$WORK/puppet/alias-clash/apply.log" | tail -n 10 | sed 's/^/    | /'
fi

# The example shipped in the package must be accepted as it is.
example=/usr/share/doc/etcd-mirror/examples/etcd-mirror.example.conf
if (cd "$WORK" && $PY3 "$PARTS/systemdenv.py" run "$example" /usr/bin/etcd-mirror --check-config) \
    >"$WORK/example.out" 2>&1; then
    pass "example config: $(tail -1 "$WORK/example.out")"
else
    fail "example config: etcd-mirror --check-config rejects $example"
    show "$WORK/example.out"
fi
