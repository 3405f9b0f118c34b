fn main() -> eyre::Result<()> {
    viewer::lib_main()
}
