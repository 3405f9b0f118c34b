fn main() -> eyre::Result<()> {
    camera::lib_main()
}
