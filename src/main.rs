fn main() {
    println!("rgunicorn skeleton");
}
