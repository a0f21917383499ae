# @summary One etcd-mirror instance: replicates $src_path of the etcd v2
#   cluster $src into $dst_path of the cluster $dst, as the systemd service
#   etcd-mirror@NAME (from the etcd-mirror Debian package).
#
# Compatible with Wikimedia's etcdmirror::instance: the same parameters
# (src, src_path, dst, dst_path, enable, src_ignore_keys_regex), any title
# (e.g. '/conftool@eqiad.wmnet'), --strip by default.  NAME is the title
# with every character other than A-Z, a-z, 0-9 and _ replaced by _ (as
# regsubst($title, '\W', '_', 'G') does): '/conftool@eqiad.wmnet' becomes
# '_conftool_eqiad_wmnet'.
#
# The settings go to /etc/etcd-mirror/NAME.conf, the systemd
# EnvironmentFile the unit reads; a change restarts the service.
#
# @param src                   Source cluster: URL, or comma-separated endpoints.
# @param dst                   Destination cluster: URL, or comma-separated endpoints.
# @param src_path              --src-prefix: what to replicate.
# @param dst_path              --dst-prefix: where to replicate it to.
# @param strip                 --strip: remove $src_path from the keys (the
#   default, as in Wikimedia's deployment).
# @param src_ignore_keys_regex --src-ignore-keys-regex (may contain spaces,
#   quotes, $, \).
# @param ignore_keys_regex     The same; an older name.  Giving both with
#   different values fails.
# @param enable                Run the service (and start it at boot), or stop it.
# @param port                  --port of the HTTP interface (/metrics,
#   /healthz, ...).  Each instance on a host needs its own: two instances
#   with the same port fail the catalog.  0: any free port (not checked).
# @param heartbeat_key         --heartbeat-key: a SOURCE key under $src_path.
# @param max_replica_age       --max-replica-age: /healthz is 503 when older (0: never).
# @param auto_resync           false: --no-auto-resync.
# @param on_divergence         --on-divergence.
# @param verify_interval       --verify-interval (0: never).
# @param watch_concurrency     --watch-concurrency.
# @param watch_stream          false: --no-watch-stream (a proxy that buffers answers).
# @param write_pipeline        --write-pipeline (passed when not the default 32; 1: one
#   event write at a time).
# @param src_api               --src-api: 'v2' or 'v3' (passed when not 'v2').
# @param dst_api               --dst-api: 'v2' or 'v3' (passed when not 'v2').  The
#   modes are v2 -> v2, v3 -> v3 and v2 -> v3; $ha needs a v2 destination.
# @param reload                --reload at every start: a hitless resync each
#   time the service (re)starts.  Needed once for a new replica.
# @param ha                    --ha: active/standby.  Declare the same instance
#   on two or more hosts; only the holder of the lock on $dst replicates.
# @param ha_ttl                --ha-ttl: the lock's TTL in seconds (with $ha only).
# @param src_credentials       'user:password' for $src, kept out of the process list.
# @param dst_credentials       'user:password' for $dst, kept out of the process list.
#
# @example Wikimedia's profile::etcd::replication, unchanged
#   etcdmirror::instance { '/conftool@eqiad.wmnet':
#     src                   => 'https://conf1007.eqiad.wmnet:2379',
#     src_path              => '/conftool',
#     dst                   => 'http://127.0.0.1:2378',
#     dst_path              => '/conftool',
#     enable                => true,
#     src_ignore_keys_regex => '^/conftool/v1/mediawiki-config/',
#   }
#
# @example A second instance on the same host
#   etcdmirror::instance { 'spicerack':
#     src             => 'https://etcd1.eqiad.example:2379,https://etcd2.eqiad.example:2379',
#     src_path        => '/spicerack',
#     dst             => 'https://etcd1.codfw.example:2379',
#     dst_path        => '/spicerack',
#     port            => 8001,
#     max_replica_age => 120,
#   }
define etcdmirror::instance (
  String                 $src,
  String                 $dst,
  String                 $src_path              = '/',
  String                 $dst_path              = '/replica',
  Boolean                $strip                 = true,
  Optional[String]       $src_ignore_keys_regex = undef,
  Optional[String]       $ignore_keys_regex     = undef,
  Boolean                $enable                = true,
  Integer[0, 65535]      $port                  = 8000,
  Optional[String]       $heartbeat_key         = undef,
  Numeric                $max_replica_age       = 0,
  Boolean                $auto_resync           = true,
  Enum['fail', 'resync'] $on_divergence         = 'fail',
  Numeric                $verify_interval       = 0,
  Integer[1, 256]        $watch_concurrency     = 16,
  Boolean                $watch_stream          = true,
  Integer[1, 256]        $write_pipeline        = 32,
  Enum['v2', 'v3']       $src_api               = 'v2',
  Enum['v2', 'v3']       $dst_api               = 'v2',
  Boolean                $reload                = false,
  Boolean                $ha                    = false,
  Optional[Integer[2, 3600]] $ha_ttl            = undef,
  Optional[String]       $src_credentials       = undef,
  Optional[String]       $dst_credentials       = undef,
) {
  # The title becomes a file name and a systemd instance name: only
  # A-Z a-z 0-9 _ are kept (Ruby's \W is ASCII-only).
  $instance_name = regsubst($title, '\W', '_', 'G')

  # Both names of the regex are accepted; compare() with ignore_case=false,
  # since == on strings ignores case in Puppet and a regex does not.
  if $src_ignore_keys_regex =~ String and $ignore_keys_regex =~ String
    and compare($src_ignore_keys_regex, $ignore_keys_regex, false) != 0 {
    fail("etcdmirror::instance[${title}]: src_ignore_keys_regex and ignore_keys_regex differ; give only one")
  }
  $keys_regex = $src_ignore_keys_regex ? {
    undef   => $ignore_keys_regex,
    default => $src_ignore_keys_regex,
  }

  # An EnvironmentFile value cannot hold a newline (it would start a new line).
  [$title, $src, $src_path, $dst, $dst_path, $keys_regex, $heartbeat_key,
    $src_credentials, $dst_credentials].each |$value| {
    if $value =~ String and $value =~ /[\n\r\u0000]/ {
      fail("etcdmirror::instance[${title}]: values must not contain newlines or NUL")
    }
  }
  if $src_api == 'v3' and $dst_api == 'v2' {
    fail("etcdmirror::instance[${title}]: a v3 source cannot be mirrored into a v2 destination")
  }
  if $ha and $dst_api == 'v3' {
    fail("etcdmirror::instance[${title}]: ha needs dst_api => 'v2'")
  }
  if $ha_ttl =~ Integer and !$ha {
    fail("etcdmirror::instance[${title}]: ha_ttl only means something with ha => true")
  }
  if $max_replica_age < 0 or $verify_interval < 0 {
    fail("etcdmirror::instance[${title}]: max_replica_age and verify_interval must be >= 0")
  }

  # One HTTP port per instance and host.  etcdmirror::port[PORT] can be
  # declared once only, so a second instance with the same port fails the
  # catalog; the check before it names both instances.
  if $port != 0 {
    $port_title = String($port)
    if defined(Etcdmirror::Port[$port_title]) {
      $other = Etcdmirror::Port[$port_title]['instance']
      fail(@("MSG"/L))
        etcdmirror::instance[${title}]: port ${port} is already used by \
        etcdmirror::instance[${other}]; give each instance on a host its own port
        |-MSG
    }
    etcdmirror::port { $port_title:
      instance => $title,
    }
  }

  $config = "/etc/etcd-mirror/${instance_name}.conf"

  file { $config:
    ensure    => file,
    owner     => 'root',
    group     => 'root',
    # It may hold credentials; systemd reads it as root before the service
    # drops to its dynamic user.
    mode      => '0600',
    show_diff => false,
    content   => template('etcdmirror/instance.conf.erb'),
  }

  # The package provides the unit and /etc/etcd-mirror; order after it when
  # the catalog manages it (a collector that matches nothing is harmless).
  Package <| title == 'etcd-mirror' |> -> File[$config]

  $ensure = $enable ? {
    true    => 'running',
    default => 'stopped',
  }
  service { "etcd-mirror@${instance_name}":
    ensure    => $ensure,
    enable    => $enable,
    provider  => 'systemd',
    subscribe => File[$config],
  }
}
