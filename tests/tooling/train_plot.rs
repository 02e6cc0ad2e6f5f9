//! `caliper-train plot` draws through the one reliability-diagram renderer (`trust::diagram`).

use std::process::Command;

use caliper::repository::CalibrationFile;
use caliper::trust::diagram::reliability_png;

#[test]
fn train_plot_writes_the_diagram_modules_png_of_the_shipped_bins() {
    let calib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("calib/mnist.json");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reliability.png");
    let status = Command::new(env!("CARGO_BIN_EXE_caliper-train"))
        .args(["plot", "--calib"])
        .arg(&calib)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let written = std::fs::read(&out).unwrap();

    let file = CalibrationFile::load(&calib).unwrap();
    let panels = file
        .fit
        .as_ref()
        .unwrap()
        .reliability_panels(file.calibrator.method())
        .unwrap();
    assert_eq!(panels.len(), 2, "before and after");
    assert_eq!(written, reliability_png(&panels).unwrap());
    let img = image::load_from_memory(&written).unwrap();
    let one = image::load_from_memory(&reliability_png(&panels[..1]).unwrap()).unwrap();
    assert_eq!(img.width(), 2 * one.width(), "two panels side by side");
}
