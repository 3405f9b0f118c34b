fn main() -> eyre::Result<()> {
    replay::lib_main()
}
