// Java's own PKCS#11 provider (SunPKCS11) against libhsmgate_pkcs11.so.
//
// Usage: java Pkcs11Consumer PROVIDER_CONFIG [PIN]
//
// The token holds, made by the hsmgate CLI before this runs: a P-256 key
// and an RSA-2048 key, each with a certificate of the same CKA_ID and
// label (java-ec, java-rsa), and an AES key (java-aes). Signatures made by
// the token are verified with the JDK's software providers. Prints one
// "ok: ..." line per check; any failure throws (exit code 1).

import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.Provider;
import java.security.PublicKey;
import java.security.SecureRandom;
import java.security.Security;
import java.security.Signature;
import java.security.cert.Certificate;
import java.security.spec.ECGenParameterSpec;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import javax.crypto.AEADBadTagException;
import javax.crypto.Cipher;
import javax.crypto.SecretKey;
import javax.crypto.spec.GCMParameterSpec;

public class Pkcs11Consumer {
    static void ok(String what) {
        System.out.println("ok: " + what);
    }

    static void check(boolean condition, String what) {
        if (!condition) {
            throw new AssertionError(what);
        }
    }

    static byte[] sign(String algorithm, Provider p, PrivateKey key, byte[] data) throws Exception {
        Signature s = Signature.getInstance(algorithm, p);
        s.initSign(key);
        s.update(data);
        return s.sign();
    }

    static boolean verify(String algorithm, String provider, PublicKey key, byte[] data, byte[] sig)
            throws Exception {
        Signature v = Signature.getInstance(algorithm, provider);
        v.initVerify(key);
        v.update(data);
        return v.verify(sig);
    }

    public static void main(String[] args) throws Exception {
        char[] pin = args.length > 1 ? args[1].toCharArray() : null;
        Provider p = Security.getProvider("SunPKCS11").configure(args[0]);
        Security.addProvider(p);
        byte[] data = "signed through hsmgate by SunPKCS11".getBytes("UTF-8");

        KeyStore ks = KeyStore.getInstance("PKCS11", p);
        ks.load(null, pin);
        List<String> aliases = Collections.list(ks.aliases());
        Collections.sort(aliases);
        ok("KeyStore aliases " + aliases);
        for (String alias : new String[] {"java-ec", "java-rsa"}) {
            check(ks.isKeyEntry(alias), alias + " is a key entry");
            check(ks.getCertificate(alias) != null, alias + " has its certificate");
        }

        PrivateKey ec = (PrivateKey) ks.getKey("java-ec", pin);
        Certificate ecCert = ks.getCertificate("java-ec");
        byte[] sig = sign("SHA256withECDSA", p, ec, data);
        check(verify("SHA256withECDSA", "SunEC", ecCert.getPublicKey(), data, sig),
                "SHA256withECDSA verifies with SunEC");
        check(!verify("SHA256withECDSA", "SunEC", ecCert.getPublicKey(), "other".getBytes("UTF-8"), sig),
                "and not over other data");
        ok("SHA256withECDSA by the token, verified by SunEC");

        PrivateKey rsa = (PrivateKey) ks.getKey("java-rsa", pin);
        Certificate rsaCert = ks.getCertificate("java-rsa");
        sig = sign("SHA256withRSA", p, rsa, data);
        check(verify("SHA256withRSA", "SunRsaSign", rsaCert.getPublicKey(), data, sig),
                "SHA256withRSA verifies with SunRsaSign");
        ok("SHA256withRSA by the token, verified by SunRsaSign");

        SecretKey aes = (SecretKey) ks.getKey("java-aes", pin);
        check(aes != null, "java-aes is in the KeyStore");
        byte[] iv = new byte[12];
        new SecureRandom().nextBytes(iv);
        Cipher enc = Cipher.getInstance("AES/GCM/NoPadding", p);
        enc.init(Cipher.ENCRYPT_MODE, aes, new GCMParameterSpec(128, iv));
        enc.updateAAD("header".getBytes("UTF-8"));
        byte[] ct = enc.doFinal(data);
        check(ct.length == data.length + 16, "ciphertext and tag");
        Cipher dec = Cipher.getInstance("AES/GCM/NoPadding", p);
        dec.init(Cipher.DECRYPT_MODE, aes, new GCMParameterSpec(128, iv));
        dec.updateAAD("header".getBytes("UTF-8"));
        check(Arrays.equals(dec.doFinal(ct), data), "GCM round trip");
        ct[3] ^= 1;
        Cipher tampered = Cipher.getInstance("AES/GCM/NoPadding", p);
        tampered.init(Cipher.DECRYPT_MODE, aes, new GCMParameterSpec(128, iv));
        tampered.updateAAD("header".getBytes("UTF-8"));
        try {
            tampered.doFinal(ct);
            throw new AssertionError("a tampered ciphertext decrypted");
        } catch (AEADBadTagException expected) {
            ok("AES/GCM/NoPadding round trip; a tampered ciphertext is refused");
        }

        SecureRandom random = SecureRandom.getInstance("PKCS11", p);
        byte[] a = new byte[64];
        byte[] b = new byte[64];
        random.nextBytes(a);
        random.nextBytes(b);
        check(!Arrays.equals(a, b), "two draws differ");
        ok("SecureRandom from the token");

        KeyPairGenerator gen = KeyPairGenerator.getInstance("EC", p);
        gen.initialize(new ECGenParameterSpec("secp384r1"));
        KeyPair pair = gen.generateKeyPair();
        sig = sign("SHA384withECDSA", p, pair.getPrivate(), data);
        check(verify("SHA384withECDSA", "SunEC", pair.getPublic(), data, sig),
                "a generated P-384 key's signature verifies with SunEC");
        ok("KeyPairGenerator EC secp384r1 on the token, SHA384withECDSA verified by SunEC");
        System.out.println("ALL OK");
    }
}
