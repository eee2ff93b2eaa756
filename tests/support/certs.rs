//! Test certificates made at run time: a CA and server certificates it signs.

use std::path::PathBuf;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};

/// A certificate authority that can sign server certificates.
pub struct Ca {
    certificate: X509,
    key: PKey<Private>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = new_key();
        let mut builder = X509::builder().unwrap();
        builder.set_version(2).unwrap();
        builder
            .set_serial_number(&serial().to_asn1_integer().unwrap())
            .unwrap();
        let subject = subject(name);
        builder.set_subject_name(&subject).unwrap();
        builder.set_issuer_name(&subject).unwrap();
        builder.set_pubkey(&key).unwrap();
        builder
            .set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        builder
            .set_not_after(&Asn1Time::days_from_now(2).unwrap())
            .unwrap();
        builder
            .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        builder
            .append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .unwrap(),
            )
            .unwrap();
        builder.sign(&key, MessageDigest::sha256()).unwrap();
        Ca {
            certificate: builder.build(),
            key,
        }
    }

    /// The CA certificate in PEM form.
    pub fn pem(&self) -> Vec<u8> {
        self.certificate.to_pem().unwrap()
    }

    /// Writes the CA certificate to a new temporary file and returns its path.
    pub fn write_pem(&self, name: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("fanout-test-{}-{name}.pem", std::process::id()));
        std::fs::write(&path, self.pem()).unwrap();
        path
    }

    /// Issues a server certificate for the DNS names and IP addresses in `names`.
    pub fn issue(&self, names: &[&str]) -> native_tls::Identity {
        let key = new_key();
        let mut builder = X509::builder().unwrap();
        builder.set_version(2).unwrap();
        builder
            .set_serial_number(&serial().to_asn1_integer().unwrap())
            .unwrap();
        builder.set_subject_name(&subject(names[0])).unwrap();
        builder
            .set_issuer_name(self.certificate.subject_name())
            .unwrap();
        builder.set_pubkey(&key).unwrap();
        builder
            .set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        builder
            .set_not_after(&Asn1Time::days_from_now(2).unwrap())
            .unwrap();
        let mut alt_names = SubjectAlternativeName::new();
        for name in names {
            if name.parse::<std::net::IpAddr>().is_ok() {
                alt_names.ip(name);
            } else {
                alt_names.dns(name);
            }
        }
        let context = builder.x509v3_context(Some(&self.certificate), None);
        let alt_names = alt_names.build(&context).unwrap();
        builder.append_extension(alt_names).unwrap();
        builder.sign(&self.key, MessageDigest::sha256()).unwrap();
        let certificate = builder.build();

        let key_pem = key.private_key_to_pem_pkcs8().unwrap();
        native_tls::Identity::from_pkcs8(&certificate.to_pem().unwrap(), &key_pem).unwrap()
    }
}

fn new_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn serial() -> BigNum {
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    serial
}

fn subject(common_name: &str) -> openssl::x509::X509Name {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)
        .unwrap();
    name.build()
}
