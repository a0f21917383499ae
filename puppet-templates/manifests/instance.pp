# @summary One etcd-mirror instance: replicates $src_path of the etcd v2
#   cluster $src into $dst_path of the cluster $dst, as the systemd service
#   etcd-mirror@TITLE (from the etcd-mirror Debian package).
#
# The settings go to /etc/etcd-mirror/${title}.conf, the systemd
# EnvironmentFile the unit reads; a change restarts the service.
#
# @param src               Source cluster: URL, or comma-separated endpoints.
# @param src_path          --src-prefix: what to replicate.
# @param dst               Destination cluster: URL, or comma-separated endpoints.
# @param dst_path          --dst-prefix: where to replicate it to.
# @param strip             --strip: remove $src_path from the keys.
# @param ignore_keys_regex --src-ignore-keys-regex (may contain spaces, quotes, $, \).
# @param enable            Run the service (and start it at boot), or stop it.
# @param port              --port of the HTTP interface (/metrics, /healthz, ...).
# @param heartbeat_key     --heartbeat-key: a SOURCE key under $src_path.
# @param max_replica_age   --max-replica-age: /healthz is 503 when older (0: never).
# @param auto_resync       false: --no-auto-resync.
# @param on_divergence     --on-divergence.
# @param verify_interval   --verify-interval (0: never).
# @param watch_concurrency --watch-concurrency.
# @param watch_stream      false: --no-watch-stream (a proxy that buffers answers).
# @param reload            --reload at every start: a hitless resync each time
#   the service (re)starts.  Needed once for a new replica.
# @param src_credentials   'user:password' for $src, kept out of the process list.
# @param dst_credentials   'user:password' for $dst, kept out of the process list.
#
# @example
#   etcdmirror::instance { 'conftool':
#     src               => 'https://etcd1.eqiad.example:2379,https://etcd2.eqiad.example:2379',
#     src_path          => '/conftool',
#     dst               => 'https://etcd1.codfw.example:2379',
#     dst_path          => '/conftool',
#     strip             => true,
#     ignore_keys_regex => '/conftool/local/.*',
#     max_replica_age   => 120,
#   }
define etcdmirror::instance (
  String                 $src,
  String                 $src_path          = '/',
  String                 $dst,
  String                 $dst_path          = '/replica',
  Boolean                $strip             = false,
  Optional[String]       $ignore_keys_regex = undef,
  Boolean                $enable            = true,
  Integer[0, 65535]      $port              = 8000,
  Optional[String]       $heartbeat_key     = undef,
  Numeric                $max_replica_age   = 0,
  Boolean                $auto_resync       = true,
  Enum['fail', 'resync'] $on_divergence     = 'fail',
  Numeric                $verify_interval   = 0,
  Integer[1, 256]        $watch_concurrency = 16,
  Boolean                $watch_stream      = true,
  Boolean                $reload            = false,
  Optional[String]       $src_credentials   = undef,
  Optional[String]       $dst_credentials   = undef,
) {
  # The title becomes a file name and a systemd instance name.
  unless $title =~ /\A[A-Za-z0-9][A-Za-z0-9_.:-]*\z/ {
    fail("etcdmirror::instance: '${title}' is not a usable instance name (letters, digits, _ . : -)")
  }
  # An EnvironmentFile value cannot hold a newline (it would start a new line).
  [$src, $src_path, $dst, $dst_path, $ignore_keys_regex, $heartbeat_key,
    $src_credentials, $dst_credentials].each |$value| {
    if $value =~ String and $value =~ /[\n\r\u0000]/ {
      fail("etcdmirror::instance[${title}]: values must not contain newlines or NUL")
    }
  }
  if $max_replica_age < 0 or $verify_interval < 0 {
    fail("etcdmirror::instance[${title}]: max_replica_age and verify_interval must be >= 0")
  }

  $config = "/etc/etcd-mirror/${title}.conf"

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

  service { "etcd-mirror@${title}":
    ensure    => $enable ? {
      true    => 'running',
      default => 'stopped',
    },
    enable    => $enable,
    provider  => 'systemd',
    subscribe => File[$config],
  }
}
