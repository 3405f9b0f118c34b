fn main() -> eyre::Result<()> {
    recorder::lib_main()
}
