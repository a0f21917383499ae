# @summary A profile shaped like Wikimedia's profile::etcd::replication
#   (operations/puppet), used by scripts/check-package to show that such a
#   profile compiles unchanged against this etcdmirror::instance.
#
# One instance per host, titled "PATH@CLUSTER", with Wikimedia's parameter
# names only: no port, no strip (the define's defaults: 8000, --strip).
# check-package copies this file to modules/profile/manifests/etcd/
# replication.pp of a throwaway module path.
#
# @param origin                The cluster to replicate from: its name,
#   the path to replicate and its servers.
# @param destination_path      Where the replica goes on the local etcd.
# @param active                Whether the mirror runs on this host.
# @param src_ignore_keys_regex Keys not to replicate.
class profile::etcd::replication (
  Hash             $origin = {
    'cluster_name' => 'eqiad.wmnet',
    'path'         => '/conftool',
    'servers'      => ['conf1007.eqiad.wmnet', 'conf1008.eqiad.wmnet', 'conf1009.eqiad.wmnet'],
  },
  String           $destination_path      = '/conftool',
  Boolean          $active                = true,
  Optional[String] $src_ignore_keys_regex = '^/conftool/v1/(mediawiki-config|request-ipblocks)/',
) {
  $resource_title = "${origin['path']}@${origin['cluster_name']}"
  $src = $origin['servers'].map |$server| { "https://${server}:2379" }.join(',')

  etcdmirror::instance { $resource_title:
    src                   => $src,
    src_path              => $origin['path'],
    dst                   => 'http://127.0.0.1:2378',
    dst_path              => $destination_path,
    enable                => $active,
    src_ignore_keys_regex => $src_ignore_keys_regex,
  }
}
