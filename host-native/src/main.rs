//! `harmonylite` command-line entry point.

fn main() {
    println!("harmonylite {}", env!("CARGO_PKG_VERSION"));
}
