fn main() -> eyre::Result<()> {
    image_source::lib_main()
}
