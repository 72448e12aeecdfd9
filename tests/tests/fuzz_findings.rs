//! What the fuzzer (`gse-fuzz`, tests/fuzz/) found, kept as plain tests: each
//! input once crashed a parser or gave an error that said nothing.

use std::fs;

use gse_tests::repo;

fn found(target: &str, name: &str) -> Vec<u8> {
    fs::read(repo().join("tests/fuzz").join(target).join(name)).unwrap()
}

#[test]
fn a_malformed_dhcp_option_is_ignored_not_a_crash() {
    // dhcproto 0.12 asserts on a 4-byte option of another length.
    assert!(gsed::network::dhcp::lease_from_bytes(&found("dhcp", "found-panic-option-len")).is_none());
}

#[test]
fn a_malformed_signature_is_refused_not_a_crash() {
    // minisign 0.7 slices out of range on it.
    let key = fs::read_to_string(repo().join("tests/fuzz/signature/public-key")).unwrap();
    let sig = String::from_utf8_lossy(&found("signature", "found-panic-short-key")).into_owned();
    let r = gsed::servers::manifest::verify(key.trim(), b"# GSE config.d manifest 2\nserial 1\n", &sig);
    assert!(r.is_err());
}

#[test]
fn a_nul_in_a_config_file_is_an_error_that_says_something() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("controller/server/server.info.conf");
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, found("config", "found-nul-in-comment")).unwrap();
    let errors = gsed::config::load(&[d.path().to_owned()]).unwrap_err();
    assert!(errors.iter().all(|e| !e.message.trim().is_empty()), "{errors:?}");
    assert_eq!(errors[0].line, Some(9));
}
