"""Write an X.509 certificate (DER) for a public key the HSM holds.

Usage: make_cert.py p256|rsa PUBLIC_HEX COMMON_NAME OUT_DER

PUBLIC_HEX is the key as `hsmgate-client info` prints it (SEC1 point for
P-256, DER RSAPublicKey for RSA). The certificate is issued by a throwaway
CA key: what is tested is that applications pair it with the HSM's private
key by CKA_ID, not who signed it.
"""

import base64
import datetime
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

kind, public_hex, cn, out = sys.argv[1:5]
raw = bytes.fromhex(public_hex)
if kind == "p256":
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
else:
    # A PKCS#1 RSAPublicKey, which cryptography reads in its PEM form.
    pem = b"-----BEGIN RSA PUBLIC KEY-----\n" + base64.encodebytes(raw) + \
        b"-----END RSA PUBLIC KEY-----\n"
    public = serialization.load_pem_public_key(pem)
ca_key = ec.generate_private_key(ec.SECP256R1())
now = datetime.datetime.now(datetime.timezone.utc)
cert = (
    x509.CertificateBuilder()
    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hsmgate test CA")]))
    .public_key(public)
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(minutes=5))
    .not_valid_after(now + datetime.timedelta(days=1))
    .sign(ca_key, hashes.SHA256())
)
with open(out, "wb") as f:
    f.write(cert.public_bytes(serialization.Encoding.DER))
