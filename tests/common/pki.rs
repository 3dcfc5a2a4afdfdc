//! Throw-away certificates (openssl) for the TLS tests.

use std::process::Command;

/// A throw-away certificate authority made with the `openssl` command: `ca.pem` signs
/// `server.pem` (localhost, 127.0.0.1) and `client.pem`; `other-ca.pem` signs `server2.pem`
/// (a certificate to rotate to).
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (key, pem, subj) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN=test {ca}"),
            );
            let mut args = vec![
                "req", "-x509", "-days", "2", "-subj", &subj, "-keyout", &key, "-out", &pem,
            ];
            args.extend(ec);
            openssl(&args);
        }
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("server2.ext"),
            std::fs::read(dir.path().join("server.ext")).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("client.ext"),
            "extendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        for (name, cn, ca) in [
            ("server", "localhost", "ca"),
            ("client", "prometheus", "ca"),
            ("server2", "localhost", "other-ca"),
        ] {
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            let (key, csr, pem, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            let subj = format!("/CN={cn}");
            let mut args = vec!["req", "-subj", &subj, "-keyout", &key, "-out", &csr];
            args.extend(ec);
            openssl(&args);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &ext,
            ]);
        }
        Pki { dir }
    }

    /// The absolute path of one of the files, as text for config files.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}
