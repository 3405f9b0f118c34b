fn main() -> eyre::Result<()> {
    dora_da3::lib_main()
}
