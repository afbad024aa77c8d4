// The probe is linked by `bpf-linker`, which cargo does not know about: rebuild
// when the linker binary changes, and fail with the fix when it is missing.
fn main() {
    match which::which("bpf-linker") {
        Ok(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        Err(_) => {
            println!(
                "cargo:warning=bpf-linker not found on PATH: run `cargo xtask setup` to install it"
            );
        }
    }
}
