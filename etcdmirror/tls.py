"""TLS towards one etcd cluster: which CA to trust, which client certificate to show.

Verification is never switched off: with no CA file the system's trust store
is used, and the server's certificate must match the host name of the URL.
Each side (source, destination) has its own settings.
"""

from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import ssl
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer


class TLSConfigError(ValueError):
    """A CA, certificate or key file that cannot be used."""


@dataclass(frozen=True)
class TLSFiles:
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None

    def policy(self) -> "ClientTLSPolicy":
        """Load the files now, so that a bad file is an error at start, not later."""
        try:
            trust = None
            if self.ca_file:
                with open(self.ca_file, "rb") as f:
                    trust = ssl.Certificate.loadPEM(f.read())
            client = None
            if self.cert_file:
                with open(self.cert_file, "rb") as f:
                    pem = f.read()
                with open(self.key_file or self.cert_file, "rb") as f:
                    pem += b"\n" + f.read()
                client = ssl.PrivateCertificate.loadPEM(pem)
        except Exception as e:  # OSError, ValueError, and OpenSSL raises its own types
            raise TLSConfigError(f"{type(e).__name__}: {e}") from None
        return ClientTLSPolicy(trust, client)


@implementer(IPolicyForHTTPS)
class ClientTLSPolicy:
    """Twisted's verifying client TLS, with our trust root and client certificate."""

    def __init__(self, trust_root: Any = None, client_certificate: Any = None) -> None:
        self.trust_root = trust_root
        self.client_certificate = client_certificate

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        kwargs = {}
        if self.trust_root is not None:
            kwargs["trustRoot"] = self.trust_root
        if self.client_certificate is not None:
            kwargs["clientCertificate"] = self.client_certificate
        return ssl.optionsForClientTLS(hostname.decode("ascii"), **kwargs)
