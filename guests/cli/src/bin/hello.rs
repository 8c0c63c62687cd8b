//! Prints a fixed greeting and exits 0: the smallest successful run (stdout capture).

fn main() {
    println!("Hello from wasm-run!");
}
