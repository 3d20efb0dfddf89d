//! The committed sample stream stays what the testkit builds (so format changes
//! are noticed); `VMSTREAM_BLESS=1` rewrites it.

use std::path::Path;

#[test]
fn committed_sample_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/good/sample.vms");
    let now = vmstream_testkit::sample_stream();
    if std::env::var_os("VMSTREAM_BLESS").is_some() {
        std::fs::write(&path, &now).expect("write sample");
        return;
    }
    let committed =
        std::fs::read(&path).expect("testdata/good/sample.vms (bless with VMSTREAM_BLESS=1)");
    assert!(committed == now, "testdata/good/sample.vms differs from the testkit sample; rerun with VMSTREAM_BLESS=1 and review");
}
