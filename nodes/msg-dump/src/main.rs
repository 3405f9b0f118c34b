fn main() -> eyre::Result<()> {
    msg_dump::lib_main()
}
