"""python-pkcs11 against libhsmgate_pkcs11.so: a consumer nobody here wrote.

Usage: python_pkcs11.py LIBRARY TOKEN_LABEL STORE

STORE names the HSM node's key store: `software`, or `softhsm` (a SoftHSM2
token, which offers RSA-OAEP with SHA-1 only: there OAEP-SHA-256 must be
refused at C_DecryptInit, and SHA-1 is used).

Every signature is verified with `cryptography` against the public key read
through the token's attributes (CKA_EC_POINT, CKA_MODULUS), never through
the token itself. Prints one `ok: ...` line per check; any failure raises
and the exit code is non-zero.
"""

import hashlib
import os
import sys
import threading

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams, MGF
from pkcs11.util.ec import encode_named_curve_parameters

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

LIB, TOKEN, STORE = sys.argv[1], sys.argv[2], sys.argv[3]


def ok(what):
    print(f"ok: {what}", flush=True)


def octet_string(der):
    """The contents of a DER OCTET STRING (CKA_EC_POINT)."""
    assert der[0] == 0x04, der[:2]
    if der[1] < 0x80:
        return der[2:]
    n = der[1] & 0x7F
    return der[2 + n:]


def ec_public(key, curve):
    point = octet_string(key[Attribute.EC_POINT])
    return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)


def ec_verify(public, raw_sig, data, hash_alg):
    half = len(raw_sig) // 2
    der = encode_dss_signature(
        int.from_bytes(raw_sig[:half], "big"), int.from_bytes(raw_sig[half:], "big")
    )
    public.verify(der, data, ec.ECDSA(hash_alg))


def rsa_public(key):
    n = int.from_bytes(key[Attribute.MODULUS], "big")
    e = int.from_bytes(key[Attribute.PUBLIC_EXPONENT], "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


def must_fail(what, fn, error):
    try:
        fn()
    except error:
        ok(what)
        return
    raise AssertionError(f"{what}: no {error.__name__}")


lib = pkcs11.lib(LIB)
token = lib.get_token(token_label=TOKEN)
assert token.label == TOKEN
slot = token.slot
mechanisms = slot.get_mechanisms()
for m in (Mechanism.ECDSA_SHA256, Mechanism.EDDSA, Mechanism.SHA256_RSA_PKCS,
          Mechanism.RSA_PKCS_OAEP, Mechanism.AES_GCM, Mechanism.AES_KEY_GEN):
    assert m in mechanisms, m
ok(f"token {token.label!r}, {len(mechanisms)} mechanisms")

data = b"signed through hsmgate by python-pkcs11"

with token.open(rw=True) as session:
    # A key the CLI made before this script ran: usable here.
    cli_key = session.get_key(label="cli-p256", key_type=KeyType.EC,
                              object_class=ObjectClass.PRIVATE_KEY)
    cli_pub = session.get_key(label="cli-p256", object_class=ObjectClass.PUBLIC_KEY)
    assert cli_key[Attribute.ID] == bytes.fromhex("c1"), cli_key[Attribute.ID]
    sig = cli_key.sign(data, mechanism=Mechanism.ECDSA_SHA256)
    ec_verify(ec_public(cli_pub, ec.SECP256R1()), sig, data, hashes.SHA256())
    ok("a key made by the CLI signs here")

    # EC P-256 and P-384, token objects.
    for curve_name, curve, mech, hash_alg, label in (
        ("secp256r1", ec.SECP256R1(), Mechanism.ECDSA_SHA256, hashes.SHA256(), "py-p256"),
        ("secp384r1", ec.SECP384R1(), Mechanism.ECDSA_SHA384, hashes.SHA384(), "py-p384"),
    ):
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve_name)},
            local=True)
        pub, priv = params.generate_keypair(store=True, label=label, id=label.encode())
        assert priv[Attribute.SENSITIVE] and not priv[Attribute.EXTRACTABLE]
        sig = priv.sign(data, mechanism=mech)
        ec_verify(ec_public(pub, curve), sig, data, hash_alg)
        must_fail(f"{label}: private value is sensitive",
                  lambda: priv[Attribute.VALUE], pkcs11.exceptions.AttributeSensitive)
        ok(f"{label}: sign, verified by cryptography")

    # Multi-part: 4 MiB hashed in the library, one digest to the HSM.
    big = os.urandom(1 << 20)
    sig = priv.sign((big for _ in range(4)), mechanism=Mechanism.ECDSA_SHA384)
    ec_verify(ec_public(pub, ec.SECP384R1()), sig, big * 4, hashes.SHA384())
    ok("multi-part ECDSA-SHA384 over 4 MiB")
    # Raw ECDSA over a digest computed here; verified by the token too.
    digest = hashlib.sha384(data).digest()
    sig = priv.sign(digest, mechanism=Mechanism.ECDSA)
    assert pub.verify(digest, sig, mechanism=Mechanism.ECDSA)
    assert not pub.verify(hashlib.sha384(b"other").digest(), sig, mechanism=Mechanism.ECDSA)
    ok("ECDSA over a digest; the token's verify says yes and no")

    # Ed25519.
    params = session.create_domain_parameters(
        KeyType.EC_EDWARDS,
        {Attribute.EC_PARAMS: encode_named_curve_parameters("1.3.101.112")}, local=True)
    pub, priv = params.generate_keypair(store=True, label="py-ed25519",
                                        mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN)
    sig = priv.sign(data, mechanism=Mechanism.EDDSA)
    ed25519.Ed25519PublicKey.from_public_bytes(octet_string(pub[Attribute.EC_POINT])).verify(
        sig, data)
    ok("Ed25519: sign, verified by cryptography")

    # RSA-2048: PKCS#1 v1.5, PSS, OAEP.
    pub, priv = session.generate_keypair(KeyType.RSA, 2048, store=True, label="py-rsa",
                                         id=b"py-rsa")
    public = rsa_public(pub)
    sig = priv.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS)
    public.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
    ok("RSA SHA256-RSA-PKCS, verified by cryptography")
    sig = priv.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                    mechanism_param=(Mechanism.SHA256, MGF.SHA256, 32))
    public.verify(sig, data, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    ok("RSA SHA256-RSA-PKCS-PSS, verified by cryptography")
    secret = os.urandom(32)
    oaep = (hashes.SHA256(), Mechanism.SHA256, MGF.SHA256)
    if STORE == "softhsm":
        wrapped = public.encrypt(secret, padding.OAEP(padding.MGF1(hashes.SHA256()),
                                                      hashes.SHA256(), None))
        must_fail("OAEP-SHA-256 refused at init where the token lacks it",
                  lambda: priv.decrypt(wrapped, mechanism=Mechanism.RSA_PKCS_OAEP,
                                       mechanism_param=(Mechanism.SHA256, MGF.SHA256, None)),
                  pkcs11.exceptions.MechanismParamInvalid)
        oaep = (hashes.SHA1(), Mechanism.SHA_1, MGF.SHA1)
    wrapped = public.encrypt(secret, padding.OAEP(padding.MGF1(oaep[0]), oaep[0], None))
    assert priv.decrypt(wrapped, mechanism=Mechanism.RSA_PKCS_OAEP,
                        mechanism_param=(oaep[1], oaep[2], None)) == secret
    bad = bytearray(wrapped)
    bad[7] ^= 1
    must_fail("OAEP: a tampered ciphertext is refused",
              lambda: priv.decrypt(bytes(bad), mechanism=Mechanism.RSA_PKCS_OAEP,
                                   mechanism_param=(oaep[1], oaep[2], None)),
              pkcs11.exceptions.EncryptedDataInvalid)
    ok(f"RSA-OAEP ({oaep[0].name}) decrypts what cryptography encrypted")

    # AES-256-GCM with the application's IV.
    key = session.generate_key(KeyType.AES, 256, store=True, label="py-aes")
    nonce = session.generate_random(96)
    aad = b"header"
    ct = key.encrypt(data, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad))
    assert len(ct) == len(data) + 16
    assert key.decrypt(ct, mechanism=Mechanism.AES_GCM,
                       mechanism_param=GCMParams(nonce, aad)) == data
    must_fail("GCM: other AAD is refused",
              lambda: key.decrypt(ct, mechanism=Mechanism.AES_GCM,
                                  mechanism_param=GCMParams(nonce, b"other")),
              pkcs11.exceptions.EncryptedDataInvalid)
    ok("AES-256-GCM round trip")

    rnd = session.generate_random(8 * 5000)
    assert len(rnd) == 5000 and rnd != session.generate_random(8 * 5000)
    ok("5000 random bytes (two HSM requests)")

    labels = {k[Attribute.LABEL] for k in session.get_objects(
        {Attribute.CLASS: ObjectClass.PRIVATE_KEY})}
    for label in ("cli-p256", "py-p256", "py-p384", "py-ed25519", "py-rsa"):
        assert label in labels, (label, labels)
    ok(f"private keys listed: {sorted(labels)}")

    key.destroy()
    must_fail("a destroyed key is gone", lambda: session.get_key(label="py-aes"),
              pkcs11.exceptions.NoSuchKey)

# A session key lives as long as its session.
with token.open(rw=True) as session:
    params = session.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
        local=True)
    pub, priv = params.generate_keypair(store=False, label="py-session")
    assert not priv[Attribute.TOKEN]
    sig = priv.sign(data, mechanism=Mechanism.ECDSA_SHA256)
    ec_verify(ec_public(pub, ec.SECP256R1()), sig, data, hashes.SHA256())
with token.open() as session:
    assert not list(session.get_objects({Attribute.LABEL: "py-session"}))
ok("a session key is gone with its session")

# Eight threads, each with its own session, signing at once.
errors = []


def worker(n):
    try:
        with token.open() as s:
            k = s.get_key(label="py-p256", object_class=ObjectClass.PRIVATE_KEY)
            p = s.get_key(label="py-p256", object_class=ObjectClass.PUBLIC_KEY)
            public = ec_public(p, ec.SECP256R1())
            for i in range(25):
                msg = f"thread {n} message {i}".encode()
                ec_verify(public, k.sign(msg, mechanism=Mechanism.ECDSA_SHA256), msg,
                          hashes.SHA256())
    except Exception as e:  # noqa: BLE001 - reported below
        errors.append(f"thread {n}: {e!r}")


threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=120)
assert not any(t.is_alive() for t in threads), "a thread hung"
assert not errors, errors
ok("8 threads x 25 signatures, all verified")
print("ALL OK")
