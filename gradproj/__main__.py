from gradproj.cli import main

main()
