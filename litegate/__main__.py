from litegate.cli import main

main()
