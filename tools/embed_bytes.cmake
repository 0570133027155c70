# embed_bytes.cmake — what tools/embed.cmake and tools/embed_files.cmake share: a file's bytes
# as the body of a C array initializer, sixteen a line.
#   embed_bytes(FILE BYTES_VAR LEN_VAR): BYTES_VAR gets "0x..,0x..,..." (each byte followed by a
#   comma), LEN_VAR the file's length.
function(embed_bytes file bytes_var len_var)
  file(READ "${file}" hex HEX)
  string(LENGTH "${hex}" hexlen)
  math(EXPR len "${hexlen} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n    " bytes "${bytes}")
  set(${bytes_var} "${bytes}" PARENT_SCOPE)
  set(${len_var} "${len}" PARENT_SCOPE)
endfunction()
