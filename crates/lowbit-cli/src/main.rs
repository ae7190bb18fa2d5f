fn main() {
    println!("lowbit");
}
