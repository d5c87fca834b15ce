"""What a musician sees and hears: audio previews and piano rolls."""
