//! Turns the tier opt-outs (`TERRARIUM_SKIP_WASM`, `TERRARIUM_SKIP_DOCKER`,
//! `TERRARIUM_SKIP_BROWSER`, `TERRARIUM_SKIP_PROMTOOL` set to `1`) into cfgs, so that the tests of a tier that
//! is opted out are reported as ignored, with the variable as the reason, rather
//! than as passed. Nothing else in the build depends on them.

fn main() {
    for (var, cfg) in [
        ("TERRARIUM_SKIP_WASM", "terrarium_skip_wasm"),
        ("TERRARIUM_SKIP_DOCKER", "terrarium_skip_docker"),
        ("TERRARIUM_SKIP_BROWSER", "terrarium_skip_browser"),
        ("TERRARIUM_SKIP_PROMTOOL", "terrarium_skip_promtool"),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo::rerun-if-env-changed={var}");
        if std::env::var_os(var).is_some_and(|v| v == "1") {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
