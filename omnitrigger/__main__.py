from omnitrigger.cli import main

main()
