fn main() -> eyre::Result<()> {
    depth_export::lib_main()
}
