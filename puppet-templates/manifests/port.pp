# @summary The HTTP port of one etcdmirror::instance, claimed on this host.
#
# Declared by etcdmirror::instance, titled by the port number.  It manages
# nothing; it exists so that two instances on one host cannot both use the
# same port: Puppet refuses a second etcdmirror::port with the same title.
#
# @param instance The title of the etcdmirror::instance that uses the port.
define etcdmirror::port (
  String $instance,
) {
  unless $title =~ /\A[1-9][0-9]{0,4}\z/ and Integer($title) <= 65535 {
    fail("etcdmirror::port[${title}]: not a TCP port number")
  }
}
