from bangercli.cli import main

main()
